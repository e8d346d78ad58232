"""The paper's largest model as a preset: align-l2 (EfficientNet-L2 + BERT-large). Its towers' sizes agree
with the published ones once what ALIGN leaves out is added back, and `init` refuses it, with the figures,
where the memory to build it is not free (instead of being killed half-way by the OOM killer)."""

from __future__ import annotations

from pathlib import Path

import torch

from align_torch.cli import main
from align_torch.inspect.summary import summarize
from align_torch.model.config import preset
from align_torch.train import starter


def test_align_l2_towers_match_the_published_sizes(capsys):
    config = preset("align-l2")
    assert config.vision.image_size == 289 and config.text.num_layers == 24 and config.text.hidden_size == 1024
    summary = summarize(config)
    # Noisy Student's 480M count includes the top 1x1 conv to 1280 x 4.3 = 5504 channels (+ BN) and the
    # 1000-class head, which ALIGN's image tower does not have.
    top = config.vision.num_features * 5504 + 2 * 5504 + 5504 * 1000 + 1000
    assert abs(summary.vision_params + top - 480e6) <= 0.01 * 480e6, summary.vision_params
    assert abs(summary.text_params - 340e6) <= 0.02 * 340e6, summary.text_params  # BERT-large, 24 x 1024
    assert main(["summary", "--model", "align-l2", "--stages-only"]) == 0
    out = capsys.readouterr().out
    assert "total:  803.8M params" in out and "published: EfficientNet-L2: 480M" in out


def test_init_refuses_align_l2_below_its_memory_need(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(starter, "available_memory", lambda: 2 * 2**30)
    real = starter.AlignModel

    def meta_only(config):  # a check that let it through must not allocate the 3 GB here
        if torch.empty(0).device.type != "meta":
            raise AssertionError("init built align-l2 despite the memory check")
        return real(config)

    monkeypatch.setattr(starter, "AlignModel", meta_only)
    folder = tmp_path / "l2"
    assert main(["init", str(folder), "--preset", "align-l2"]) != 0
    err = capsys.readouterr().err
    assert "align-l2 needs about 6.0 GiB of free memory" in err and "2.0 GiB is available" in err, err
    assert not folder.exists()
