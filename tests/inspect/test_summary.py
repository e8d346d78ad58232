"""Parameter/FLOP summary: totals equal the published align-base figures, per-stage rows add up, the
EfficientNet paper's B0 cost is recovered, and `align-torch summary` prints it for presets and folders."""

from __future__ import annotations

import json

import pytest

from align_torch import AlignModel, preset
from align_torch.cli import main
from align_torch.inspect.summary import summarize


@pytest.fixture(scope="module")
def base():
    return summarize(preset("align-base"))


def test_align_base_totals_match_the_published_figures(base):
    """FACTS: 16.8 GFLOP per 289 px image, 11.0 GFLOP per 64-token text, 62.1M + 109.5M = 172.1M params."""
    assert base.vision_flops / 1e9 == pytest.approx(16.8, rel=0.02)
    assert base.text_flops / 1e9 == pytest.approx(11.0, rel=0.02)
    assert base.vision_params / 1e6 == pytest.approx(62.1, abs=0.05)
    assert base.text_params / 1e6 == pytest.approx(109.5, abs=0.05)
    assert base.total_params / 1e6 == pytest.approx(172.1, abs=0.05)


def test_rows_add_up_and_have_the_real_shapes(base):
    vision_blocks = [r for r in base.blocks if r.tower == "vision" and r.name.startswith("block")]
    assert len(vision_blocks) == 55
    vision_stages = [r for r in base.stages if r.tower == "vision" and r.name.startswith("stage")]
    assert len(vision_stages) == 7
    for stage in vision_stages:
        members = [r for r in base.blocks if r.stage == stage.name]
        assert stage.flops == sum(r.flops for r in members) and stage.params == sum(r.params for r in members)
    assert sum(r.flops for r in base.stages if r.tower == "vision") == base.vision_flops
    assert sum(r.params for r in base.stages) + 1 == base.total_params  # + the temperature
    assert [s.output_shape for s in vision_stages][-1] == (640, 9, 9)
    assert vision_stages[0].output_shape == (32, 144, 144)  # transformers' stem padding: 289 -> 144
    layers = [r for r in base.blocks if r.tower == "text" and r.name.startswith("layer")]
    assert len(layers) == 12 and all(r.output_shape == (64, 768) for r in layers)


def test_params_equal_a_real_model():
    cfg = preset("align-tiny")
    summary = summarize(cfg)
    model = AlignModel(cfg)
    assert summary.total_params == sum(p.numel() for p in model.parameters())
    assert summary.vision_params == sum(p.numel() for p in model.vision_model.parameters())


def test_b0_plus_the_papers_top_conv_is_the_papers_cost():
    """EfficientNet-B0 is 0.39 G multiply-adds at 224 px with its 1x1 top conv (320 -> 1280 on 7x7) and
    classifier, which ALIGN's tower does not have."""
    b0 = summarize(preset("align-b0"))
    top_conv_macs = 320 * 1280 * 7 * 7
    classifier_macs = 1280 * 1000
    assert (b0.vision_flops / 2 + top_conv_macs + classifier_macs) / 1e9 == pytest.approx(0.39, rel=0.03)


def test_flops_scale_with_the_inputs(base):
    small = summarize(preset("align-base"), image_size=145, text_tokens=32)
    assert small.vision_flops < base.vision_flops / 3.5  # ~quarter of the pixels
    assert small.text_flops < base.text_flops / 1.9  # linear layers scale with tokens, attention faster


def test_bad_sizes_say_what_is_wrong():
    with pytest.raises(ValueError, match="at least 32 px"):
        summarize(preset("align-tiny"), image_size=8)
    with pytest.raises(ValueError, match="1..64 tokens"):
        summarize(preset("align-tiny"), text_tokens=65)


def test_cli_summary_for_a_preset_and_a_folder(capsys, tiny_hf_dir, monkeypatch):
    assert main(["summary", "--model", "align-base", "--stages-only"]) == 0
    out = capsys.readouterr().out
    assert "stage 6 (blocks 51-54)" in out and "block 54" not in out
    assert "62.1M params, 16.80 GFLOP at 289 px" in out

    def no_hub(*args, **kwargs):
        raise AssertionError("summary without --model must not ask the Hub")

    monkeypatch.setattr("align_torch.checkpoint.hub.resolve_model_dir", no_hub)
    assert main(["summary", "--stages-only"]) == 0, "no --model: the built-in align-base preset"
    assert capsys.readouterr().out == out
    monkeypatch.undo()

    assert main(["summary", "--model", str(tiny_hf_dir), "--json", "--image-size", "96"]) == 0
    d = json.loads(capsys.readouterr().out)
    model = AlignModel.from_pretrained(tiny_hf_dir)
    assert d["image_size"] == 96 and d["total_params"] == sum(p.numel() for p in model.parameters())

    assert main(["summary", "--model", "align-b9"]) == 2
    assert "'align-b9' is neither a preset (align-base, align-tiny, align-b0" in capsys.readouterr().err
    assert main(["summary", "--model", str(tiny_hf_dir / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
