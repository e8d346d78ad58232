"""Runs you can extend and read: a finished run resumed with more epochs continues it (and equals the longer
run), and each step's record carries the learning rate that step used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align_torch.train import TrainConfig, Trainer
from tests.helpers.train_data import write_shapes_manifest


def _cfg(tiny_native_dir: Path, manifest: Path, out: Path, **changes) -> TrainConfig:
    base = dict(batch_size=4, lr=1e-3, warmup=2, schedule="constant", progress=False, save_every=1000)
    return TrainConfig(model=str(tiny_native_dir), train=str(manifest), out=str(out), **{**base, **changes})


def test_finished_run_extends_with_more_epochs(tiny_native_dir: Path, tmp_path: Path):
    manifest = write_shapes_manifest(tmp_path / "data", 8)  # 2 steps per epoch
    records = []
    straight = Trainer(
        _cfg(tiny_native_dir, manifest, tmp_path / "a", epochs=2),
        callbacks=[lambda trainer, record: records.append(record)],
    ).fit()
    assert [r.lr for r in records] == [0.5e-3, 1e-3, 1e-3, 1e-3]  # warmup 1/2, 2/2, then the peak

    Trainer(_cfg(tiny_native_dir, manifest, tmp_path / "b", epochs=1)).fit()
    extended = Trainer(_cfg(tiny_native_dir, manifest, tmp_path / "b", epochs=2), resume=True).fit()
    assert extended.progress.step == 4 and len(extended.losses) == 2
    assert all(abs(a - b) <= 1e-6 for a, b in zip(extended.losses, straight.losses[2:], strict=True))


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_extend_cosine_linear_uses_the_one_go_learning_rates(tiny_native_dir: Path, tmp_path: Path, schedule: str):
    """A finished 2-step run extended to 6 steps: steps 3-6 use the rates of the 6-step run done in one go
    (not the shorter plan's end, 0.0, for the first new step)."""
    manifest = write_shapes_manifest(tmp_path / "data", 8)  # 2 steps per epoch
    straight, extended = [], []
    cfg = _cfg(tiny_native_dir, manifest, tmp_path / "a", epochs=3, warmup=0, schedule=schedule)
    Trainer(cfg, callbacks=[lambda trainer, record: straight.append(record.lr)]).fit()
    Trainer(cfg.replace(out=str(tmp_path / "b"), epochs=1)).fit()
    Trainer(
        cfg.replace(out=str(tmp_path / "b")),
        resume=True,
        callbacks=[lambda trainer, record: extended.append(record.lr)],
    ).fit()
    assert straight[0] == 1e-3 and straight[2] > 0  # the one-go plan decays over 6 steps
    assert extended == pytest.approx(straight[2:], abs=1e-12)


def test_max_steps_runs_exactly_that_many_steps_over_further_epochs(tiny_native_dir: Path, tmp_path: Path):
    """--max-steps 5 with the default --epochs 1 (2 steps per epoch) trains 5 steps, decaying to 0 over 5."""
    manifest = write_shapes_manifest(tmp_path / "data", 8)
    records = []
    cfg = _cfg(tiny_native_dir, manifest, tmp_path / "run", max_steps=5, schedule="linear", warmup=0)
    result = Trainer(cfg, callbacks=[lambda trainer, record: records.append(record)]).fit()
    assert result.progress.step == 5 and len(result.losses) == 5
    assert [r.lr for r in records] == pytest.approx([1e-3, 0.8e-3, 0.6e-3, 0.4e-3, 0.2e-3])
    assert [r.epoch for r in records] == [0, 0, 1, 1, 2]


def test_progress_bar_epoch_is_0_based_as_in_metrics_jsonl(tiny_native_dir: Path, tmp_path: Path, capsys):
    """The bar's epoch= is the epoch metrics.jsonl records for the step: 0 in the first epoch."""
    manifest = write_shapes_manifest(tmp_path / "data", 8)
    Trainer(_cfg(tiny_native_dir, manifest, tmp_path / "run", progress=True, log_every=1)).fit()
    err = capsys.readouterr().err
    logged = {json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()}
    assert logged == {0} and "epoch=0" in err and "epoch=1" not in err
