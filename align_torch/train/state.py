"""Training checkpoints: model, optimiser, scheduler, every rank's RNG state and the data position, in one
safetensors file written atomically. Tensors are safetensors tensors and everything else is JSON in its
metadata, so reading a checkpoint never runs code: one received from someone else is as safe as a model file."""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..util.class_record import check_record
from ..util.fileio import atomic_file
from .state_checks import TrainCheckpointError, check_progress, check_rng

CHECKPOINT_FILE = "checkpoint.safetensors"
# What align_torch wrote before: a pickle, which only an unsafe load can read. Never opened.
LEGACY_CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "align_torch.train_checkpoint"
VERSION = 1


@dataclass
class Progress:
    """Where a run is: `batch` micro-batches of epoch `epoch` are consumed, `step` optimiser steps taken.
    `epoch_images` and `epoch_unreadable` count this epoch's images over all ranks (for the unreadable check)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    skipped_images: int = 0
    skipped_batches: int = 0
    epoch_images: int = 0
    epoch_unreadable: int = 0


@dataclass
class Checkpoint:
    """What `--resume` needs; the state dicts are in the form `load_state_dict` takes."""

    model: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    progress: Progress
    train_config: dict[str, Any]
    rng: list[dict[str, Any]] = field(default_factory=list)  # one per rank, in rank order
    model_class: dict[str, Any] | None = None  # util/class_record.py; None in checkpoints written before it


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch (CPU and CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- writing ------------------------------------------------------------------------------------------
def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Progress,
    train_config: dict[str, Any],
    rng_states: list[dict[str, Any]],
    model_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    model_class: dict[str, Any] | None = None,
) -> Path:
    """Write everything `--resume` needs into one file, replacing the previous one only once complete.
    `model_state`/`optimizer_state`, when given, replace the model's and optimiser's own (a sharded model's,
    gathered whole). `model_class` is the model class's record (util/class_record.py)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, value in (model.state_dict() if model_state is None else model_state).items():
        tensors[f"model.{name}"] = value.detach().cpu().contiguous()
    opt = optimizer.state_dict() if optimizer_state is None else optimizer_state
    opt_values: dict[str, dict[str, Any]] = {}
    for index, values in opt["state"].items():
        opt_values[str(index)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                opt_values[str(index)][name] = value
    rng_plain = []
    for rank, state in enumerate(rng_states):
        _, keys, pos, has_gauss, cached = state["numpy"]
        tensors[f"rng.{rank}.torch"] = state["torch"]
        tensors[f"rng.{rank}.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))  # MT19937 key
        for device, cuda in enumerate(state.get("cuda", [])):
            tensors[f"rng.{rank}.cuda.{device}"] = cuda
        version, internal, gauss = state["python"]
        rng_plain.append(
            {
                "python": [version, list(internal), gauss],
                "numpy": [int(pos), int(has_gauss), float(cached)],
                "cuda_devices": len(state.get("cuda", [])),
            }
        )
    plain = {
        "model_config": model.config.to_dict(),
        "optimizer": {"param_groups": opt["param_groups"], "state": opt_values},
        "scheduler": scheduler.state_dict(),
        "progress": asdict(progress),
        "train_config": train_config,
        "rng": rng_plain,
        "model_class": model_class,
    }
    metadata = {"format": FORMAT, "version": str(VERSION), "state": json.dumps(plain)}
    with atomic_file(path) as tmp:
        mode = tmp.stat().st_mode & 0o777  # safetensors rewrites the file 0600; keep the umask's mode
        _write(tensors, tmp, metadata)
        tmp.chmod(mode)
    return Path(path)


def _write(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    save_file(tensors, str(path), metadata=metadata)


# --- reading ------------------------------------------------------------------------------------------
def _existing_checkpoint(path: str | os.PathLike) -> Path:
    """`path` if it is a checkpoint file; a pickled `checkpoint.pt` beside it is refused without being opened."""
    path = Path(path)
    legacy = path.with_name(LEGACY_CHECKPOINT_FILE)
    if not path.is_file() and legacy.is_file():
        raise TrainCheckpointError(
            f"{legacy} was written by an older align_torch as a pickle, which can run code when loaded, so it "
            "cannot be resumed safely; start a new run in another --out"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path} to resume from")
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint; TrainCheckpointError, naming the file, for anything else.
    No code from the file runs: a pickled `checkpoint.pt` beside it is refused without being opened."""
    path = _existing_checkpoint(path)
    with _reading(path):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            plain = _state(path, f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        return _unpack(path, tensors, plain)


def read_run_record(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(train config, model class record) of a checkpoint, from its header alone: no tensor is read, so a resume
    is checked against the recorded run before any weights load."""
    path = _existing_checkpoint(path)
    with _reading(path):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            plain = _state(path, f.metadata() or {})
        if not isinstance(plain, dict) or not isinstance(plain.get("train_config"), dict):
            raise TrainCheckpointError(f"{path}: train_config must be an object; the checkpoint cannot be resumed")
        return plain["train_config"], check_record(plain.get("model_class"), str(path))


def _state(path: Path, metadata: dict[str, str]) -> Any:
    """The checkpoint's JSON state, once its format and version are ours."""
    if metadata.get("format") != FORMAT:
        raise TrainCheckpointError(f"{path} is not an align_torch training checkpoint")
    if metadata.get("version") != str(VERSION):
        raise TrainCheckpointError(
            f"{path} is a training checkpoint of version {metadata.get('version')!r}; this align_torch "
            f"reads version {VERSION}"
        )
    return json.loads(metadata["state"])


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A damaged checkpoint's errors as one TrainCheckpointError naming the file."""
    try:
        yield
    except TrainCheckpointError:
        raise
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise TrainCheckpointError(
            f"{path} is truncated or corrupt and cannot be resumed ({type(e).__name__}: {e}); it was left as is"
        ) from None


def _unpack(path: Path, tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> Checkpoint:
    """The checkpoint's parts, each checked (state_checks.py) before it is put together."""
    if not isinstance(plain, dict):
        raise TrainCheckpointError(f"{path}: its state must be an object, got {type(plain).__name__}")
    for name, kind in (("optimizer", dict), ("scheduler", dict), ("train_config", dict), ("rng", list)):
        if not isinstance(plain.get(name), kind):
            raise TrainCheckpointError(
                f"{path}: {name} must be {'an object' if kind is dict else 'a list'}, got "
                f"{type(plain.get(name)).__name__}; the checkpoint cannot be resumed"
            )
    if not plain["rng"]:  # each rank's generator states are what makes a resume exact
        raise TrainCheckpointError(
            f"{path}: rng is an empty list (no rank's RNG state); the checkpoint cannot be resumed"
        )
    optimizer = plain["optimizer"]
    if not isinstance(optimizer.get("param_groups"), list) or not all(
        isinstance(g, dict) for g in optimizer["param_groups"]
    ):
        raise TrainCheckpointError(f"{path}: optimizer.param_groups must be a list of objects")
    state = optimizer.get("state")
    if not isinstance(state, dict) or not all(isinstance(v, dict) and k.isdigit() for k, v in state.items()):
        raise TrainCheckpointError(f"{path}: optimizer.state must map parameter numbers to objects")
    progress = Progress(**check_progress(path, plain.get("progress"), [f.name for f in fields(Progress)]))
    for rank, state in enumerate(plain["rng"]):
        check_rng(path, rank, state, tensors.get(f"rng.{rank}.numpy"), tensors.get(f"rng.{rank}.torch"))
    model = {name[len("model.") :]: t for name, t in tensors.items() if name.startswith("model.")}
    opt_state: dict[int, dict[str, Any]] = {int(i): dict(values) for i, values in plain["optimizer"]["state"].items()}
    for name, t in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            opt_state.setdefault(int(index), {})[key] = t
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in plain["optimizer"]["param_groups"]]
    rng = []
    for rank, state in enumerate(plain["rng"]):
        version, internal, gauss = state["python"]
        pos, has_gauss, cached = state["numpy"]
        keys = tensors[f"rng.{rank}.numpy"].numpy().astype(np.uint32)
        entry = {
            "python": (version, tuple(internal), gauss),
            "numpy": ("MT19937", keys, pos, has_gauss, cached),
            "torch": tensors[f"rng.{rank}.torch"],
        }
        if state["cuda_devices"]:
            entry["cuda"] = [tensors[f"rng.{rank}.cuda.{d}"] for d in range(state["cuda_devices"])]
        rng.append(entry)
    return Checkpoint(
        model=model,
        model_config=plain["model_config"],
        optimizer={"state": opt_state, "param_groups": groups},
        scheduler=plain["scheduler"],
        progress=progress,
        train_config=plain["train_config"],
        rng=rng,
        model_class=check_record(plain.get("model_class"), str(path)),
    )
