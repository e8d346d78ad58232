"""compare, probe and summary: what they refuse, what they say while they run, and sums that add up."""

from __future__ import annotations

import re
from pathlib import Path

import PIL.Image
import pytest

from tests.helpers.cli import run_cli


def _photos(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        PIL.Image.new("RGB", (48, 40), (40 * i, 200 - 30 * i, 90)).save(folder / f"{i}.png")
    return folder


def _classes(root: Path) -> Path:
    for split in ("train", "val"):
        for c, colour in (("red", (220, 30, 30)), ("blue", (20, 40, 230))):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                PIL.Image.new("RGB", (40, 40), tuple(max(0, v - 20 * i) for v in colour)).save(
                    root / split / c / f"{i}.png"
                )
    return root


def test_compare_refuses_a_model_with_an_hf_text_tower(model_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    from align_torch import AlignModel, AlignProcessor
    from align_torch.train.text_tower import swap_text_tower

    tower = tmp_path / "bert"
    config = transformers.BertConfig(
        vocab_size=2400, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(tower)
    processor = AlignProcessor.from_pretrained(model_dir)
    model, processor = swap_text_tower(AlignModel.from_pretrained(model_dir), f"hf:{tower}", processor)
    model.save_pretrained(tmp_path / "lit")
    processor.save_pretrained(tmp_path / "lit")
    (tmp_path / "texts.txt").write_text("a cat\na dog\na cup\na rocket\n")
    args = ("--images", _photos(tmp_path / "photos"), "--texts", tmp_path / "texts.txt", "--out", tmp_path / "cka")
    status, _, err = run_cli("compare", model_dir, tmp_path / "lit", *args, "--quiet")
    assert status == 2 and "transformers encoder" in err and "leave out --texts" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "cka").exists()


def test_compare_shows_progress_on_stderr_unless_quiet(model_dir, tmp_path):
    photos = _photos(tmp_path / "photos")
    status, _, err = run_cli("compare", model_dir, model_dir, "--images", photos, "--out", tmp_path / "a")
    assert status == 0 and f"compare {model_dir}: images" in err and "batch" in err, err
    status, _, err = run_cli("compare", model_dir, model_dir, "--images", photos, "--out", tmp_path / "b", "--quiet")
    assert status == 0 and err == "", err


def test_probe_shows_progress_on_stderr_unless_quiet(model_dir, tmp_path):
    root = _classes(tmp_path / "data")
    args = ("--model", model_dir, "--train-classes", root / "train", "--val-classes", root / "val", "--batch-size", "2")
    status, _, err = run_cli("probe", *args, "--out", tmp_path / "a")
    assert status == 0, err
    assert "probe: train images" in err and "probe: val images" in err and "probe: fitting" in err, err
    status, _, err = run_cli("probe", *args, "--out", tmp_path / "b", "--quiet")
    assert status == 0 and err == "", err


def test_summary_total_adds_up_its_printed_parts(tiny_native_dir):
    """The starter's 172,582 + 52,320 + 2,641 parameters were printed as 0.2M + 0.1M and a total of 0.2M: each
    count is now printed to within 0.1% of its exact value, so the printed parts add up to the printed total."""
    import json

    status, stdout, err = run_cli("summary", "--model", tiny_native_dir, "--stages-only")
    assert status == 0, err
    exact = json.loads(run_cli("summary", "--model", tiny_native_dir, "--json")[1])
    unit = {"K": 1e3, "M": 1e6, "B": 1e9}
    printed = {}
    for line in stdout.splitlines():
        found = re.match(r"(vision|text|total):\s+([\d.]+)([KMB]) params", line)
        if found:
            printed[found.group(1)] = float(found.group(2)) * unit[found.group(3)]
    for part in ("vision", "text", "total"):
        assert abs(printed[part] - exact[f"{part}_params"]) <= 1e-3 * exact[f"{part}_params"], (part, stdout)
    joint = exact["joint_params"]
    assert abs(printed["vision"] + printed["text"] + joint - printed["total"]) <= 2e-3 * printed["total"]
