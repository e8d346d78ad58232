"""The trainer end to end on the tiny checkpoint: exact resume after a kill, Ctrl-C, NaN, bad input,
the final folder, and the `align-torch finetune` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from align_torch import AlignModel, AlignProcessor
from align_torch.cli import main
from align_torch.evaluate import zero_shot_accuracy
from align_torch.train import NonFiniteLossError, TrainConfig, Trainer
from align_torch.train import trainer as trainer_module
from align_torch.train.state import load_checkpoint
from tests.helpers.train_data import write_shapes_classes, write_shapes_manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_shapes_manifest(tmp_path_factory.mktemp("shapes"), 12)


def _cfg(tiny_native_dir: Path, manifest: Path, out: Path, **changes) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, lr=1e-3, warmup=2, save_every=2, progress=False, log_every=1)
    return TrainConfig(model=str(tiny_native_dir), train=str(manifest), out=str(out), **{**base, **changes})


class _StopAt:
    def __init__(self, step: int, error: BaseException) -> None:
        self.step, self.error = step, error

    def __call__(self, trainer: Trainer, record) -> None:
        if record.step == self.step:
            raise self.error


def test_kill_and_resume_equals_uninterrupted_run(tiny_native_dir: Path, manifest: Path, tmp_path: Path):
    # 12 pairs / batch 4 = 3 steps per epoch, 2 epochs; drop-path, dropout and random crops all on.
    full = Trainer(_cfg(tiny_native_dir, manifest, tmp_path / "full")).fit()
    assert len(full.losses) == 6

    killed_cfg = _cfg(tiny_native_dir, manifest, tmp_path / "killed")
    with pytest.raises(RuntimeError, match="killed"):
        # Dies during step 5, after the checkpoint of step 4 (save_every=2), as a SIGKILL would.
        Trainer(killed_cfg, callbacks=[_StopAt(5, RuntimeError("killed"))]).fit()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.safetensors").progress.step == 4
    resumed = Trainer(killed_cfg, resume=True).fit()
    # Step 5 ran twice but is written once: metrics.jsonl keeps only what the checkpoint had seen.
    records = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert len(resumed.losses) == 2
    assert resumed.losses == full.losses[4:]  # to the bit

    a = AlignModel.from_pretrained(tmp_path / "full" / "final").state_dict()
    b = AlignModel.from_pretrained(tmp_path / "killed" / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # The final folder is a complete checkpoint: model + processor, convertible to the HF layout.
    processor = AlignProcessor.from_pretrained(tmp_path / "full" / "final")
    assert processor.image_processor.crop_size == (64, 64)
    assert main(["convert", str(tmp_path / "full" / "final"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] > 0 for r in records if r["type"] == "train")


def test_resume_checks(tiny_native_dir: Path, manifest: Path, tmp_path: Path):
    cfg = _cfg(tiny_native_dir, manifest, tmp_path / "run", max_steps=1)
    Trainer(cfg).fit()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg).fit()
    with pytest.raises(ValueError, match="batch_size: 4 -> 6"):
        Trainer(cfg.replace(batch_size=6), resume=True).fit()
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        Trainer(cfg.replace(out=str(tmp_path / "other")), resume=True).fit()


def test_a_second_ctrl_c_stops_at_once_without_saving(tiny_native_dir: Path, manifest: Path, tmp_path: Path):
    # A KeyboardInterrupt that is not the step-boundary stop may land mid-step: nothing is saved after it.
    cfg = _cfg(tiny_native_dir, manifest, tmp_path / "run", save_every=1)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, callbacks=[_StopAt(2, KeyboardInterrupt())]).fit()
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").progress.step == 1


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tiny_native_dir: Path, manifest: Path, tmp_path: Path, monkeypatch
):
    real = trainer_module.global_loss
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(trainer_module, "global_loss", poisoned)
    cfg = _cfg(tiny_native_dir, manifest, tmp_path / "run", save_every=1)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 .*checkpoint\.safetensors \(step 2\)"):
        Trainer(cfg).fit()
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").progress.step == 2
    assert not (tmp_path / "run" / "final").exists()


def test_finetune_command_with_bad_input_and_evaluations(tiny_native_dir: Path, tmp_path: Path, capsys):
    manifest = write_shapes_manifest(tmp_path / "data", 9)
    (tmp_path / "data" / "images" / "train_0002.png").write_bytes(b"")
    with manifest.open("a") as f:
        f.write("images/train_0003.png,\n")  # an empty caption: skipped and counted
    val = write_shapes_manifest(tmp_path / "data", 6, seed=5, name="val.csv")
    classes = write_shapes_classes(tmp_path / "classes", per_class=1)
    args = ["finetune", "--model", str(tiny_native_dir), "--train", str(manifest), "--out", str(tmp_path / "run")]
    args += ["--val", str(val), "--zero-shot-dir", str(classes), "--batch-size", "4", "--quiet", "--lock-text"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trained 2 steps" in out and "skipped 1 unreadable images" in out and "1 empty captions" in out
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["type"] == "eval"]
    assert {"val/i2t_r1", "val/t2i_r5", "zero_shot/top1"} <= set(evals[-1])
    assert evals[-1]["val/num_images"] == 6
    # The last evaluation ran on the weights saved as final/: the library's figure for those.
    final = tmp_path / "run" / "final"
    again = zero_shot_accuracy(AlignModel.from_pretrained(final), AlignProcessor.from_pretrained(final), classes)
    assert evals[-1]["zero_shot/top1"] == pytest.approx(again.top1)


def test_engine_options_together(tiny_native_dir: Path, manifest: Path, tmp_path: Path):
    cfg = _cfg(
        tiny_native_dir,
        manifest,
        tmp_path / "run",
        max_steps=1,
        grad_accum=2,
        precision="bf16",
        grad_checkpointing=True,
        optimizer="lamb",
        freeze_bn=True,
        temperature_min=0.08,  # the tiny checkpoint's temperature is 0.0734
    )
    result = Trainer(cfg).fit()
    assert result.progress.step == 1 and result.progress.epoch == 1  # 3 batches of 4: one step of 2
    start = AlignModel.from_pretrained(tiny_native_dir).state_dict()
    final = AlignModel.from_pretrained(tmp_path / "run" / "final").state_dict()
    assert float(final["temperature"]) == pytest.approx(0.08)
    for k in start:
        if "running_" in k or "num_batches_tracked" in k:
            assert torch.equal(start[k], final[k]), k  # frozen BN, even with checkpointed recompute
    assert not torch.equal(start["text_projection.weight"], final["text_projection.weight"])
