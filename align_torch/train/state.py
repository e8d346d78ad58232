"""Training checkpoints: model, optimiser, scheduler, every rank's RNG state and the data position, written
atomically so a crash or a NaN never leaves a half-written or poisoned checkpoint behind."""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import atomic_file

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Progress:
    """Where a run is: `batch` micro-batches of epoch `epoch` are consumed, `step` optimiser steps taken."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    skipped_images: int = 0
    skipped_batches: int = 0


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


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Progress,
    train_config: dict[str, Any],
    rng_states: list[dict[str, Any]],
) -> Path:
    """Write everything `--resume` needs into one file, replacing the previous one only once complete."""
    payload = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": model.config.to_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": asdict(progress),
        "train_config": train_config,
        "rng": rng_states,  # one per rank, in rank order
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path} to resume from")
    # Not weights_only: the RNG states are Python and NumPy objects. Only load checkpoints you wrote.
    payload = torch.load(path, map_location="cpu", weights_only=False)
    missing = {"model", "optimizer", "scheduler", "progress", "train_config", "rng"} - set(payload)
    if missing:
        raise ValueError(f"{path} is not an align_torch training checkpoint (missing {sorted(missing)})")
    return payload
