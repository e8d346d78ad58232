"""Runs you can extend and read: a finished run resumed with more epochs continues it (and equals the longer
run), and each step's record carries the learning rate that step used."""

from __future__ import annotations

from pathlib import Path

from _train_data import write_shapes_manifest

from align_torch.train import TrainConfig, Trainer


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
