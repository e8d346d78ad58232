"""`align-torch finetune` stopped by Ctrl-C (SIGINT) or kill -9 at a random step, then `--resume`d, ends
with the same weights, to the bit, and the same per-step losses as a run that was never stopped."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align_torch.train.state import CHECKPOINT_FILE, load_checkpoint
from tests.helpers.train_data import write_shapes_manifest

STEPS = 4  # 8 pairs, batch 4, 2 epochs; checkpoints after steps 2 and 4


def _command(model: Path, train: Path, out: Path, *extra: str) -> list[str]:
    args = ["finetune", "--model", str(model), "--train", str(train), "--out", str(out), "--epochs", "2"]
    args += ["--batch-size", "4", "--lr", "1e-3", "--warmup", "2", "--log-every", "1", "--save-every", "2"]
    return [sys.executable, "-m", "align_torch", *args, "--quiet", *extra]


def _train_losses(out: Path) -> list[tuple[int, float]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["type"] == "train"]


def _stop_at(command: list[str], out: Path, step: int, sig: signal.Signals) -> subprocess.CompletedProcess:
    """Start the command, send `sig` once metrics.jsonl shows `step` (and, for kill -9, once a checkpoint exists
    to resume from: step 2's line is logged before its checkpoint is written), and wait for the process to end."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    need_checkpoint = sig == signal.SIGKILL
    while time.monotonic() < deadline and proc.poll() is None:
        reached = (out / "metrics.jsonl").is_file() and any(s >= step for s, _ in _train_losses(out))
        if reached and (not need_checkpoint or (out / CHECKPOINT_FILE).is_file()):
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def data(tiny_native_dir: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(manifest, folder of a run that was never stopped)."""
    manifest = write_shapes_manifest(tmp_path_factory.mktemp("shapes"), 8)
    out = tmp_path_factory.mktemp("full") / "run"
    subprocess.run(_command(tiny_native_dir, manifest, out), check=True, capture_output=True)
    return manifest, out


def _assert_same_run(out: Path, reference: Path) -> None:
    assert _train_losses(out) == _train_losses(reference)  # every step once, every loss to the bit
    a = load_file(out / "final" / "model.safetensors")
    b = load_file(reference / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_stop_and_resume_equals_an_uninterrupted_run(tiny_native_dir: Path, data, tmp_path: Path, sig):
    manifest, reference = data
    out = tmp_path / "run"
    # At least one step left to stop in; kill -9 after the first checkpoint, so there is a run to resume.
    step = random.randint(1, STEPS - 2) if sig == signal.SIGINT else random.randint(2, STEPS - 1)
    stopped = _stop_at(_command(tiny_native_dir, manifest, out), out, step, sig)
    if sig == signal.SIGINT:
        assert stopped.returncode == 130, stopped.stderr
        assert "stopping after this step" in stopped.stderr and "Traceback" not in stopped.stderr
        # Saved at the boundary of the step in flight (or the one just finished).
        assert load_checkpoint(out / CHECKPOINT_FILE).progress.step in (step, step + 1), step
    else:
        assert stopped.returncode == -signal.SIGKILL
    resumed = subprocess.run(_command(tiny_native_dir, manifest, out, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(out, reference)


def _ddp_worker(rank: int, port: int, model: str, train: str, out: str, results: str) -> None:
    import torch.distributed as dist

    from align_torch.train import Interrupted, TrainConfig, Trainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        cfg = TrainConfig(model=model, train=train, out=out, batch_size=2, progress=False)

        def ctrl_c_on_rank_1(trainer, record) -> None:
            if trainer.dist.rank == 1 and record.step == 1:
                trainer.request_stop()

        trainer = Trainer(cfg, callbacks=[ctrl_c_on_rank_1])
        try:
            trainer.fit()
            outcome = "finished"
        except Interrupted:
            outcome = "interrupted"
        state = {"outcome": outcome, "step": trainer.progress.step, "rng": torch.get_rng_state().tolist()}
        Path(results, f"{rank}.json").write_text(json.dumps(state))
    finally:
        dist.destroy_process_group()


def test_ctrl_c_on_one_rank_stops_every_rank_at_one_step(tiny_native_dir: Path, data, tmp_path: Path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manifest, _ = data
    out = tmp_path / "run"
    args = (port, str(tiny_native_dir), str(manifest), str(out), str(tmp_path))
    mp.spawn(_ddp_worker, args=args, nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert [r["outcome"] for r in ranks] == ["interrupted", "interrupted"]
    assert [r["step"] for r in ranks] == [1, 1]
    checkpoint = load_checkpoint(out / CHECKPOINT_FILE)
    assert checkpoint.progress.step == 1
    # Every rank's generator as it was at the stop, for the masks of the steps still to come.
    assert [state["torch"].tolist() for state in checkpoint.rng] == [r["rng"] for r in ranks]
    assert ranks[0]["rng"] != ranks[1]["rng"]
