"""The one reader of torchrun's environment: which rank this process is, of how many, on which local GPU.

torchrun (and `srun torchrun`) sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address MASTER_ADDR /
MASTER_PORT for every process it starts; a plain `python` run sets none of them and is rank 0 of 1.
Fine-tuning, evaluation and the embeddings folder all ask here, so they agree on what a run is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TorchrunEnv:
    """This process's place in a torchrun launch; the defaults are a process started without torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # the GPU index on this machine: cuda:LOCAL_RANK
    master_addr: str | None = None  # read by torch.distributed's env:// rendezvous, shown in messages
    master_port: int | None = None

    @property
    def distributed(self) -> bool:
        """More than one process: a process group must be joined or the work shared."""
        return self.world > 1


def _int(environ: Mapping[str, str], name: str, default: int | None, minimum: int) -> int | None:
    text = environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer (torchrun sets it)") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={value} must be at least {minimum}")
    return value


def torchrun_env(environ: Mapping[str, str] | None = None) -> TorchrunEnv:
    """Read RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from `environ` (default: os.environ).

    Missing variables take the single-process values; a value that is not an integer, or a RANK outside
    0..WORLD_SIZE-1, raises ValueError naming the variable."""
    environ = os.environ if environ is None else environ
    world = _int(environ, "WORLD_SIZE", 1, 1)
    rank = _int(environ, "RANK", 0, 0)
    if rank >= world:
        raise ValueError(f"environment variable RANK={rank} must be below WORLD_SIZE={world}")
    return TorchrunEnv(
        rank=rank,
        world=world,
        local_rank=_int(environ, "LOCAL_RANK", 0, 0),
        master_addr=environ.get("MASTER_ADDR") or None,
        master_port=_int(environ, "MASTER_PORT", None, 0),  # torchrun --master-port 0 passes 0 on
    )
