"""Fine-tuning that fails loud and loses nothing: checkpoints that run no code, corrupt or unwritable
checkpoints, unreadable data, non-finite numbers, one run per folder, metrics without repeats."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from align_torch import AlignModel
from align_torch.cli import main
from align_torch.train import NonFiniteLossError, RunLockedError, TrainConfig, Trainer
from align_torch.train import state as state_module
from align_torch.train import trainer as trainer_module
from align_torch.train.lock import LOCK_FILE, acquire_run_lock, release_run_lock
from align_torch.train.metrics import drop_records_after
from align_torch.train.state import CHECKPOINT_FILE, load_checkpoint
from tests.helpers.train_data import shapes_run, write_shapes_manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_shapes_manifest(tmp_path_factory.mktemp("shapes"), 12)


@pytest.fixture(scope="module")
def one_step_run(tiny_native_dir: Path, manifest: Path, tmp_path_factory) -> Path:
    """A run folder holding the checkpoint of one step (of six)."""
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = TrainConfig(
        model=str(tiny_native_dir), train=str(manifest), out=str(out), epochs=2, batch_size=4, progress=False
    )
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, callbacks=[lambda trainer, record: trainer.request_stop()]).fit()
    return out


def _finetune(tiny_native_dir: Path, train: Path, out: Path, *extra: str) -> int:
    args = ["finetune", "--model", str(tiny_native_dir), "--train", str(train), "--out", str(out)]
    return main([*args, "--batch-size", "4", "--epochs", "2", "--quiet", *extra])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


class _CreatesFile:
    """Unpickling this creates a file: what a hostile checkpoint could do instead."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_hostile_checkpoint_runs_no_code(tiny_native_dir: Path, manifest: Path, tmp_path: Path, capsys):
    marker = tmp_path / "pwned"
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"model": _CreatesFile(marker), "progress": {"step": 1}}, old / "checkpoint.pt")
    assert _finetune(tiny_native_dir, manifest, old, "--resume") == 2
    assert "cannot be resumed safely" in _error_line(capsys)
    assert not marker.exists()
    assert _finetune(tiny_native_dir, manifest, old) == 2  # a fresh run does not overwrite it either
    assert "checkpoint.pt exists" in _error_line(capsys)

    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(old / "checkpoint.pt", renamed / CHECKPOINT_FILE)
    assert _finetune(tiny_native_dir, manifest, renamed, "--resume") == 2
    assert "truncated or corrupt" in _error_line(capsys)
    assert not marker.exists()


def test_checkpoint_is_safetensors_at_a_step_boundary(tiny_native_dir: Path, one_step_run: Path):
    path = one_step_run / CHECKPOINT_FILE
    assert path.read_bytes()[8:9] == b"{"  # a safetensors JSON header, no pickle
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    checkpoint = load_checkpoint(path)
    assert checkpoint.progress.step == 1 and checkpoint.progress.batch == 1
    # Saved between steps: BatchNorm has counted exactly one training batch.
    start = AlignModel.from_pretrained(tiny_native_dir).state_dict()["vision_model.stem.bn.num_batches_tracked"]
    assert checkpoint.model["vision_model.stem.bn.num_batches_tracked"] == start + 1
    assert all(torch.isfinite(t).all() for t in checkpoint.model.values() if t.is_floating_point())


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_is_one_line_and_left_as_is(
    tiny_native_dir: Path, manifest: Path, one_step_run: Path, tmp_path: Path, capsys, damage: str
):
    out = tmp_path / "run"
    shutil.copytree(one_step_run, out)
    path = out / CHECKPOINT_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:8] + b"\xff" * 64 + data[72:])
    damaged = path.read_bytes()
    assert _finetune(tiny_native_dir, manifest, out, "--resume") == 2
    assert "is truncated or corrupt and cannot be resumed" in _error_line(capsys)
    assert path.read_bytes() == damaged


def test_full_disk_keeps_the_previous_checkpoint(
    tiny_native_dir: Path, manifest: Path, tmp_path: Path, monkeypatch, capsys
):
    real, calls = state_module._write, []

    def writer(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(state_module, "_write", writer)
    out = tmp_path / "run"
    assert _finetune(tiny_native_dir, manifest, out, "--max-steps", "2", "--save-every", "1") == 1  # runtime failure
    line = _error_line(capsys)
    assert "No space left on device" in line and "previous checkpoint (step 1) is intact" in line
    assert load_checkpoint(out / CHECKPOINT_FILE).progress.step == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.safetensors", "metrics.jsonl"]


def _bad_manifest(folder: Path, unreadable: int) -> Path:
    manifest = write_shapes_manifest(folder, 12)
    for i in range(unreadable):
        (folder / "images" / f"train_{i:04d}.png").write_bytes(b"not an image")
    return manifest


@pytest.mark.parametrize("unreadable", [12, 7])
def test_unreadable_images_stop_the_run(tiny_native_dir: Path, tmp_path: Path, monkeypatch, capsys, unreadable: int):
    manifest = _bad_manifest(tmp_path / "data", unreadable)
    real, epochs = trainer_module.Trainer._run_epoch, []

    def run_epoch(self, *args):
        epochs.append(1)
        assert len(epochs) <= 3, "epochs without a readable image go on and on"
        return real(self, *args)

    monkeypatch.setattr(trainer_module.Trainer, "_run_epoch", run_epoch)
    assert _finetune(tiny_native_dir, manifest, tmp_path / "run") == 2
    line = _error_line(capsys)
    assert str(manifest) in line and "images/train_000" in line
    if unreadable == 7:
        assert "more than --max-unreadable-fraction 0.5" in line
        out = tmp_path / "tolerant"
        assert _finetune(tiny_native_dir, manifest, out, "--max-unreadable-fraction", "0.9", "--max-steps", "1") == 0


@pytest.mark.parametrize("poison", ["weights", "gradients"])
def test_non_finite_step_is_never_saved(tiny_native_dir: Path, manifest: Path, tmp_path: Path, poison: str):
    def break_step_3(trainer: Trainer, record) -> None:
        if record.step != 2:
            return
        if poison == "weights":
            for group in trainer.optimizer.param_groups:
                group["lr"] = float("inf")  # what `--lr inf` does from the first step
        else:
            trainer.model.text_projection.weight.register_hook(lambda grad: grad * float("nan"))

    cfg = shapes_run(tiny_native_dir, tmp_path, manifest, save_every=1, clip_grad=None)
    with pytest.raises(NonFiniteLossError, match=rf"{poison} are not finite at step 3 .* \(step 2\), untouched"):
        Trainer(cfg, callbacks=[break_step_3]).fit()
    checkpoint = load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)
    assert checkpoint.progress.step == 2
    tensors = [*checkpoint.model.values(), *(t for s in checkpoint.optimizer["state"].values() for t in s.values())]
    assert all(torch.isfinite(t).all() for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point())


def test_one_run_per_folder(tiny_native_dir: Path, manifest: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    lock = acquire_run_lock(out)
    holder = json.loads(lock.read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(RunLockedError, match=rf"in use by pid {os.getpid()} on {socket.gethostname()}"):
        acquire_run_lock(out)
    assert _finetune(tiny_native_dir, manifest, out) == 2  # refused before anything is read or written
    assert f"in use by pid {os.getpid()}" in _error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    release_run_lock(lock)
    assert not lock.exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
    taken = acquire_run_lock(out)
    assert json.loads(taken.read_text())["pid"] == os.getpid()
    assert f"took over {lock} left by pid {dead.pid}" in capsys.readouterr().err
    release_run_lock(taken)

    lock.write_text(json.dumps({"pid": dead.pid, "host": "another-host", "since": "then"}))
    with pytest.raises(RunLockedError, match="another-host"):
        acquire_run_lock(out)  # a pid on another host cannot be checked: never taken over


def test_metrics_keep_only_what_the_checkpoint_has_seen(tmp_path: Path):
    records = [
        {"type": "train", "step": 3, "epoch": 0},
        {"type": "eval", "step": 3, "epoch": 0},  # after the epoch ended: redone if the checkpoint is from before
        {"type": "train", "step": 4, "epoch": 1},
    ]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"type": "train", "st'  # torn by a kill
    (tmp_path / "metrics.jsonl").write_text(text)
    assert drop_records_after(tmp_path, 3, 0, eval_pending=True) is None
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == records[:1]
    (tmp_path / "metrics.jsonl").write_text(text)
    assert drop_records_after(tmp_path, 3, 0) == 3  # saved after a mid-epoch evaluation (--max-steps)
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == records[:2]
    (tmp_path / "metrics.jsonl").write_text(text)
    assert drop_records_after(tmp_path, 3, 1) == 3
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == records[:2]
