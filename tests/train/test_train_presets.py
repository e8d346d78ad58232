"""`finetune --preset` builds a preset from scratch instead of loading --model, `--image-preset`/`--text-preset` put a
random tower of the paper's grid in place of one of --model's; each is recorded, so `--resume` alone continues to
the weights of a run never stopped; options that name the same tower otherwise are refused by name; `summary` of
the run's final/ prints the published size of a grid tower beside its own count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align_torch import AlignModel
from align_torch.model.config import AlignConfig, grid_image_tower, preset, published_sizes
from align_torch.train import TrainConfig, Trainer
from align_torch.train.state import CHECKPOINT_FILE, read_run_record
from tests.helpers.cli import run_cli
from tests.helpers.train_data import write_shapes_manifest


def _argv(train: Path, out: Path, steps: int, *extra) -> list:
    args = ["finetune", "--train", train, "--out", out, "--max-steps", steps, "--batch-size", "4", "--lr", "1e-3"]
    # A constant rate: a run cut at 2 steps and resumed to 3 follows the schedule of one run of 3.
    return [
        *args,
        "--schedule",
        "constant",
        "--save-every",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


def _same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_preset_trains_from_scratch_and_resumes_as_recorded(tmp_path: Path):
    torch.set_num_threads(1)
    train = write_shapes_manifest(tmp_path / "data", 8)
    status, _, stderr = run_cli(*_argv(train, tmp_path / "whole", 3, "--preset", "align-tiny"))
    assert status == 0, stderr
    assert run_cli(*_argv(train, tmp_path / "cut", 2, "--preset", "align-tiny"))[0] == 0
    status, _, stderr = run_cli("finetune", "--out", tmp_path / "cut", "--resume", "--max-steps", "3", "--quiet")
    assert status == 0, stderr
    _same_weights(tmp_path / "whole", tmp_path / "cut")
    assert read_run_record(tmp_path / "cut" / CHECKPOINT_FILE)[0]["preset"] == "align-tiny"
    final = AlignModel.from_pretrained(tmp_path / "whole" / "final").config
    assert (final.vision, final.text) == (preset("align-tiny").vision, preset("align-tiny").text)
    status, _, stderr = run_cli("finetune", "--out", tmp_path / "cut", "--resume", "--preset", "align-b1-bert-mini")
    assert status == 2 and "--preset align-b1-bert-mini (the run has align-tiny)" in stderr


def test_tower_presets_replace_one_tower_each_and_resume(model_dir: Path, tmp_path: Path):
    torch.set_num_threads(1)
    fields = dict(model=str(model_dir), train=str(write_shapes_manifest(tmp_path / "data", 8)), batch_size=4)
    fields |= dict(max_steps=2, lr=1e-3, progress=False, save_every=1, workers=0, device="cpu")
    fields |= dict(image_preset="efficientnet-b0", text_preset="bert-mini")
    whole = Trainer(TrainConfig(out=str(tmp_path / "whole"), **fields)).fit()
    Trainer(TrainConfig(out=str(tmp_path / "cut"), **{**fields, "max_steps": 1})).fit()
    resumed = Trainer(TrainConfig(out=str(tmp_path / "cut"), **fields), resume=True).fit()
    assert resumed.losses == whole.losses[1:]
    _same_weights(tmp_path / "whole", tmp_path / "cut")
    config = AlignModel.from_pretrained(tmp_path / "whole" / "final").config
    assert config.vision == grid_image_tower("b0") and (config.text.num_layers, config.text.hidden_size) == (4, 256)
    start = AlignModel.from_pretrained(model_dir).config
    assert config.projection_dim == start.projection_dim  # the embedding keeps --model's size: a new projection
    status, stdout, stderr = run_cli("summary", "--model", tmp_path / "whole" / "final", "--json")
    assert status == 0, stderr
    summary = json.loads(stdout)
    assert summary["published"] == ["BERT-mini: 11.3M parameters (with its pooler)"]  # B0 is no grid tower
    assert summary["vision_params"] > 0 and summary["text_flops"] > 0


def test_published_sizes_follow_each_grid_tower():
    b3 = AlignConfig(vision=grid_image_tower("b3"))
    assert published_sizes(b3) == (
        "EfficientNet-B3: 12M parameters, 1.8B multiply-adds at 300 px (with its top conv and 1000-class head)",
        "BERT-base: 110.1M parameters (with its pooler)",
    )
    assert published_sizes(preset("align-tiny")) == ()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--preset", "align-tiny", "--model", "x"], "--preset does not combine with --model: each says which model"),
        (["--preset", "align-tiny", "--text-preset", "bert-mini"], "--preset does not combine with --text-preset"),
        (
            ["--image-preset", "efficientnet-b1", "--image-tower", "hf:x"],
            "--image-preset does not combine with --image-tower: each says which image tower to train",
        ),
        (["--text-preset", "bert-mini", "--text-tower", "hf:x"], "--text-preset does not combine with --text-tower"),
    ],
)
def test_conflicting_model_options_are_refused_by_name(extra: list, message: str, tmp_path: Path):
    status, _, stderr = run_cli(*_argv(tmp_path / "train.csv", tmp_path / "run", 1, *extra))
    assert status == 2 and message in stderr, stderr
    assert not (tmp_path / "run").exists()


def test_an_unknown_tower_preset_is_refused_with_the_names():
    with pytest.raises(ValueError, match="image_preset must be one of efficientnet-b0, .*got 'efficientnet-b9'"):
        TrainConfig(train="t.csv", out="o", image_preset="efficientnet-b9")
