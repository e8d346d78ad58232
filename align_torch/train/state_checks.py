"""Every value a training checkpoint holds, checked against what it can be before `--resume` uses it: a file
edited by hand or by accident is refused with the file and the field named, before anything in the run folder
changes (an unchecked step of 10^12 would skip training and rewrite final/; a negative one would drop metrics).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


class TrainCheckpointError(ValueError):
    """A training checkpoint that cannot be resumed: missing, truncated, corrupt, or an older unsafe format."""


def _fail(path: Path, field: str, what: str, value: Any) -> TrainCheckpointError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return TrainCheckpointError(f"{path}: {field} must be {what}, got {shown}; the checkpoint cannot be resumed")


def whole(path: Path, field: str, value: Any, low: int = 0, high: int | None = None) -> int:
    """`value` if it is an int (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _fail(path, field, f"a whole number {bounds}", value)
    return value


def real(path: Path, field: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    """`value` if it is a finite number (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _fail(path, field, f"a finite number in [{low}, {high}]", value)
    return float(value)


def check_progress(path: Path, value: Any, names: Sequence[str]) -> dict[str, int]:
    """The saved progress (fields `names`): every field present, a whole number >= 0, consistent with the others."""
    if not isinstance(value, dict) or sorted(value) != sorted(names):
        raise _fail(path, "progress", f"an object with the fields {', '.join(names)}", value)
    p = {name: whole(path, f"progress.{name}", value[name]) for name in names}
    if p["epoch_unreadable"] > p["epoch_images"]:
        raise _fail(path, "progress.epoch_unreadable", "at most progress.epoch_images", p["epoch_unreadable"])
    # Every epoch and every step took at least one micro-batch, run or skipped.
    if p["epoch"] > p["step"] + p["skipped_batches"]:
        raise _fail(path, "progress.epoch", "at most progress.step + progress.skipped_batches", p["epoch"])
    return p


def check_run_position(path: Path, progress: Any, total_steps: int, grad_accum: int) -> None:
    """The saved position against this run's plan: a checkpoint past the planned end is refused rather than
    taken as a finished run (which would train nothing and rewrite final/)."""
    if progress.batch > (progress.step + progress.skipped_batches) * grad_accum:
        raise _fail(path, "progress.batch", "at most the micro-batches taken so far", progress.batch)
    if progress.step > total_steps:
        raise TrainCheckpointError(
            f"{path}: progress.step is {progress.step}, past this run's {total_steps} optimiser steps; resume with "
            "more --epochs or --max-steps (a checkpoint edited by hand cannot be resumed)"
        )


def _like(path: Path, field: str, saved: Any, fresh: Any) -> None:
    """`saved` has the form of `fresh`, the value the live object gives: same types, same lengths, finite."""
    if isinstance(fresh, bool) or fresh is None:
        if not (saved is None or isinstance(saved, bool)):
            raise _fail(path, field, "true, false or null", saved)
    elif isinstance(fresh, int):
        whole(path, field, saved, low=-1)  # LambdaLR starts at last_epoch -1
    elif isinstance(fresh, float):
        real(path, field, saved)
    elif isinstance(fresh, str):
        if not isinstance(saved, str):
            raise _fail(path, field, "a string", saved)
    elif isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            raise _fail(path, field, f"a list of {len(fresh)}", saved)
        for i, (s, f) in enumerate(zip(saved, fresh, strict=True)):
            _like(path, f"{field}[{i}]", s, f)
    elif isinstance(fresh, dict):
        if not isinstance(saved, dict):
            raise _fail(path, field, "an object", saved)
        for key, f in fresh.items():
            if key not in saved:
                raise _fail(path, f"{field}.{key}", "present", None)
            _like(path, f"{field}.{key}", saved[key], f)


def check_model_tensors(path: Path, saved: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """The checkpoint's model tensors against the live model's: the same names, each of the model's shape
    (load_state_dict would stop with a RuntimeError listing them all)."""
    live = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(live) - set(saved))
    unexpected = sorted(set(saved) - set(live))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise TrainCheckpointError(f"{path}: its model tensors do not fit this model ({detail}); cannot resume")
    for name, shape in live.items():
        if tuple(saved[name].shape) != shape:
            raise _fail(path, f"model.{name}", f"of shape {shape}, as the model's", tuple(saved[name].shape))


def check_optimizer(path: Path, saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """The saved optimiser state against the live optimiser: its groups (lr, betas, eps, weight decay, the
    parameters) and each parameter's moments (finite, of the parameter's shape)."""
    fresh = optimizer.state_dict()
    _like(path, "optimizer.param_groups", saved["param_groups"], fresh["param_groups"])
    for i, group in enumerate(saved["param_groups"]):
        if list(group["params"]) != fresh["param_groups"][i]["params"]:
            raise _fail(
                path, f"optimizer.param_groups[{i}].params", "this model's trainable parameters", group["params"]
            )
        real(path, f"optimizer.param_groups[{i}].lr", group["lr"], low=0)
        real(path, f"optimizer.param_groups[{i}].eps", group["eps"], low=0)
        real(path, f"optimizer.param_groups[{i}].weight_decay", group["weight_decay"], low=0)
        for j, beta in enumerate(group["betas"]):
            real(path, f"optimizer.param_groups[{i}].betas[{j}]", beta, low=0, high=1)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, values in saved["state"].items():
        field = f"optimizer.state.{index}"
        whole(path, field, index, high=len(params) - 1)
        if not isinstance(values, dict) or not {"step", "exp_avg", "exp_avg_sq"} <= set(values):
            raise _fail(path, field, "an object with step, exp_avg and exp_avg_sq", values)
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                whole(path, f"{field}.{name}", value)  # Lamb keeps its step count as a plain number
                continue
            shape = () if name == "step" else tuple(params[index].shape)
            if value.numel() != math.prod(shape) or not value.is_floating_point() or not torch.isfinite(value).all():
                raise _fail(path, f"{field}.{name}", f"finite floats of shape {shape}", tuple(value.shape))
            if name == "step" and value.item() < 0:
                raise _fail(path, f"{field}.{name}", "at least 0", value.item())


def check_scheduler(path: Path, saved: Any, scheduler: Any, step: int) -> None:
    """The saved schedule has the live scheduler's form and stands at the saved step."""
    _like(path, "scheduler", saved, scheduler.state_dict())
    for i, base in enumerate(saved["base_lrs"]):
        real(path, f"scheduler.base_lrs[{i}]", base, low=0)
    if saved["last_epoch"] != step:
        raise _fail(path, "scheduler.last_epoch", f"progress.step ({step})", saved["last_epoch"])


def check_rng(path: Path, rank: int, state: Any, keys: torch.Tensor | None, torch_state: torch.Tensor | None) -> None:
    """One rank's RNG state: each generator's state is tried on a scratch generator, so what `set_rng_state`
    is later given is known to load."""
    field = f"rng[{rank}]"
    for name, tensor in (("numpy", keys), ("torch", torch_state)):
        if tensor is None:
            raise _fail(path, f"rng.{rank}.{name}", "a tensor in the file", None)
    if not isinstance(state, dict) or not {"python", "numpy", "cuda_devices"} <= set(state):
        raise _fail(path, field, "an object with python, numpy and cuda_devices", state)
    python = state["python"]
    try:
        version, internal, gauss = python
        random.Random().setstate((version, tuple(internal), gauss))
    except (TypeError, ValueError, OverflowError):
        raise _fail(path, f"{field}.python", "Python's random state (version, 625 numbers, gauss)", python) from None
    numpy = state["numpy"]
    try:
        pos, has_gauss, cached = numpy
        whole(path, f"{field}.numpy", pos, high=624)
        whole(path, f"{field}.numpy", has_gauss, high=1)
        real(path, f"{field}.numpy", cached)
        if keys.shape != (624,) or keys.dtype != torch.int64 or not ((keys >= 0) & (keys < 2**32)).all():
            raise _fail(path, f"rng.{rank}.numpy", "624 numbers in [0, 2^32)", tuple(keys.shape))
        np.random.RandomState().set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    except (TypeError, ValueError):
        raise _fail(path, f"{field}.numpy", "NumPy's random state (pos, has_gauss, cached)", numpy) from None
    if torch_state.dtype != torch.uint8 or torch_state.shape != torch.get_rng_state().shape:
        raise _fail(path, f"rng.{rank}.torch", "torch's CPU generator state", tuple(torch_state.shape))
    whole(path, f"{field}.cuda_devices", state["cuda_devices"], high=1024)
