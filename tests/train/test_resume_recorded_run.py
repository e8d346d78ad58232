"""A run folder remembers its arguments: `finetune --out RUN --resume` alone continues the recorded run (model and
--model-class included) to the same weights as a run never stopped; a differing option is refused, naming it,
before any weights are read; --max-steps/--epochs extend the run and are said."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align_torch.inference.loader import load_model
from align_torch.train import Trainer
from align_torch.train.state import CHECKPOINT_FILE, read_run_record
from tests.helpers.cli import run_cli
from tests.helpers.train_data import write_shapes_manifest

VARIANT = "tests.helpers.variants:PreLN"
OTHER = "tests.helpers.variants:FlippedText"


def _finetune(model: Path, train: Path, out: Path, *extra) -> list[str]:
    args = ["finetune", "--model", model, "--train", train, "--out", out, "--max-steps", "4", "--batch-size", "4"]
    args += ["--lr", "1e-3", "--schedule", "cosine", "--save-every", "2", "--workers", "0", "--device", "cpu"]
    return [*args, "--quiet", "--model-class", VARIANT, *extra]


def _stop_after_step(monkeypatch, step: int) -> None:
    """Every Trainer made while patched stops (with a checkpoint) after optimiser step `step`, as Ctrl-C does."""
    init = Trainer.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.callbacks.append(lambda trainer, record: trainer.request_stop() if record.step >= step else None)

    monkeypatch.setattr(Trainer, "__init__", patched)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_shapes_manifest(tmp_path_factory.mktemp("resume_data"), 8)  # 2 steps per epoch at batch 4


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_native_dir, data) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    status, _, stderr = run_cli(*_finetune(tiny_native_dir, data, out))
    assert status == 0, stderr
    return out


def test_resume_with_no_arguments_continues_the_recorded_run_exactly(tmp_path, tiny_native_dir, data, straight):
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        _stop_after_step(mp, 2)
        status, _, _ = run_cli(*_finetune(tiny_native_dir, data, out))
    assert status != 0 and (out / CHECKPOINT_FILE).is_file() and not (out / "final").exists()
    recorded, model_class = read_run_record(out / CHECKPOINT_FILE)
    assert recorded["model_class"] == VARIANT and model_class["class"] == VARIANT
    status, _, stderr = run_cli("finetune", "--out", out, "--resume")  # nothing else: model, class, data recorded
    assert status == 0, stderr
    ours, theirs = load_file(out / "final" / "model.safetensors"), load_file(straight / "final" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # final/config.json records the class, and a command loading the folder builds it without the flag
    assert json.loads((out / "final" / "config.json").read_text())["model_class"]["class"] == VARIANT
    assert type(load_model(out / "final", "cpu")).__name__ == "PreLN"


def test_a_differing_option_is_refused_by_name_before_any_weights_load(straight, tmp_path, monkeypatch):
    from align_torch import AlignModel

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were read before the options were checked")

    monkeypatch.setattr(AlignModel, "from_pretrained", no_loading)
    monkeypatch.setattr("align_torch.train.trainer.load_checkpoint", no_loading)
    status, _, stderr = run_cli("finetune", "--out", straight, "--resume", "--model", tmp_path / "elsewhere")
    assert status == 2 and f"--model {tmp_path / 'elsewhere'} (the run has " in stderr
    status, _, stderr = run_cli("finetune", "--out", straight, "--resume", "--lr", "0.5", "--batch-size", "2")
    assert status == 2 and "--batch-size 2 (the run has 4)" in stderr and "--lr 0.5 (the run has 0.001)" in stderr
    status, _, stderr = run_cli("finetune", "--out", straight, "--resume", "--model-class", OTHER)
    assert status == 2 and OTHER in stderr and VARIANT in stderr


def test_extending_the_run_is_accepted_and_said(straight, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight, out)
    status, _, stderr = run_cli("finetune", "--out", out, "--resume", "--max-steps", "6")
    assert status == 0, stderr
    assert "resuming with --max-steps: 4 -> 6" in stderr
    # cosine decayed to 0 at step 4 of 4; the schedule recomputed for 6 steps has a rate there again, and says so
    assert "the cosine schedule is recomputed for 6 steps, so the learning rate at step 4 is 0.00025" in stderr
    assert read_run_record(out / CHECKPOINT_FILE)[0]["max_steps"] == 6


def test_resume_without_a_run_and_a_new_run_without_train_say_what_is_missing(tmp_path):
    status, _, stderr = run_cli("finetune", "--out", tmp_path / "none", "--resume")
    assert status == 2 and "no training checkpoint" in stderr
    status, _, stderr = run_cli("finetune", "--out", tmp_path / "none")
    assert status == 2 and "required: --train" in stderr
