"""--resume checks every number it reads from the run folder before using it: progress, optimiser, scheduler and
RNG state in checkpoint.safetensors, and the records of metrics.jsonl. A lie is refused with the file and the
field named, before anything in the folder changes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from align_torch.train import TrainCheckpointError, TrainConfig, Trainer
from align_torch.train.state import CHECKPOINT_FILE
from tests.helpers.train_data import shapes_run


@pytest.fixture(scope="module")
def finished(tiny_native_dir: Path, tmp_path_factory) -> tuple[TrainConfig, Path]:
    """A finished 2-step run (one epoch), to be copied and edited by each test."""
    root = tmp_path_factory.mktemp("finished")
    cfg = shapes_run(tiny_native_dir, root, lr=1e-3, log_every=1, workers=0)
    Trainer(cfg).fit()
    return cfg, root / "run"


def _copy(run: Path, to: Path) -> Path:
    to.mkdir()
    for name in (CHECKPOINT_FILE, "metrics.jsonl"):
        (to / name).write_bytes((run / name).read_bytes())
    return to


def _edit(run: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the checkpoint's JSON state through `change`, keeping its tensors."""
    path = run / CHECKPOINT_FILE
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    state = json.loads(metadata["state"])
    change(state)
    save_file(tensors, str(path), metadata={**metadata, "state": json.dumps(state)})


def _resume(cfg: TrainConfig, run: Path, **changes) -> None:
    Trainer(cfg.replace(out=str(run), **changes), resume=True).fit()


def _set(*path: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets state[path[0]]...[path[-2]] to path[-1]."""
    keys, value = path[:-1], path[-1]

    def change(state: dict[str, Any]) -> None:
        target = state
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def test_resume_refuses_a_step_of_10_12_and_leaves_final_untouched(finished, tmp_path: Path):
    cfg, run = finished
    for name, change in {
        "alone": _set("progress", "step", 10**12),
        "with epoch": lambda s: s["progress"].update(step=10**12, epoch=5 * 10**11),
    }.items():
        edited = _copy(run, tmp_path / name.replace(" ", "_"))
        _edit(edited, change)
        _edit(edited, _set("scheduler", "last_epoch", 10**12))
        with pytest.raises(TrainCheckpointError, match=r"checkpoint\.safetensors.*progress\.step"):
            _resume(cfg, edited)
        assert not (edited / "final").exists(), name


def test_resume_refuses_a_negative_step_and_keeps_metrics_history(finished, tmp_path: Path):
    cfg, run = finished
    edited = _copy(run, tmp_path / "run")
    history = (edited / "metrics.jsonl").read_text()
    _edit(edited, _set("progress", "step", -1))
    with pytest.raises(TrainCheckpointError, match=r"checkpoint\.safetensors.*progress\.step"):
        _resume(cfg, edited)
    assert (edited / "metrics.jsonl").read_text() == history and history.count("\n") >= 2


@pytest.mark.parametrize(
    "field, change",
    [
        ("optimizer.param_groups[0].lr", _set("optimizer", "param_groups", 0, "lr", "fast")),
        ("optimizer.param_groups[0].betas", _set("optimizer", "param_groups", 0, "betas", [0.9])),
        ("optimizer.param_groups", _set("optimizer", "param_groups", {})),
        ("optimizer.state.100000", _set("optimizer", "state", {"100000": {"step": 1}})),
        ("scheduler.last_epoch", _set("scheduler", "last_epoch", "2")),
        ("scheduler.base_lrs", _set("scheduler", "base_lrs", None)),
        ("rng[0].python", _set("rng", 0, "python", [3, [1, 2], None])),
        ("rng[0].numpy", _set("rng", 0, "numpy", ["pos", 0, 0.0])),
        ("progress", _set("progress", {"step": 2})),
        ("progress.epoch", _set("progress", "epoch", 1.5)),
        ("train_config", _set("train_config", [])),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_resume_names_the_field_of_malformed_optimiser_scheduler_rng_state(finished, tmp_path: Path, field, change):
    cfg, run = finished
    edited = _copy(run, tmp_path / "run")
    _edit(edited, change)
    with pytest.raises(TrainCheckpointError, match=rf"checkpoint\.safetensors.*{re.escape(field)}"):
        _resume(cfg, edited, epochs=2)


@pytest.mark.parametrize(
    "line", ['{"type": "train", "step": "3", "epoch": 0}', '{"type": "eval", "step": null, "epoch": 0}', "[1, 2]"]
)
def test_resume_names_the_line_of_a_bad_metrics_jsonl_record(finished, tmp_path: Path, line: str):
    cfg, run = finished
    edited = _copy(run, tmp_path / "run")
    history = (edited / "metrics.jsonl").read_text()
    (edited / "metrics.jsonl").write_text(line + "\n" + history)
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 1"):
        _resume(cfg, edited, epochs=2)
    assert (edited / "metrics.jsonl").read_text() == line + "\n" + history
