"""One process or many: torchrun's environment decides. The same training code runs in both.

NCCL carries only CUDA tensors and gloo only CPU tensors, so a CUDA run creates its process group with one
backend per device ("cpu:gloo,cuda:nccl"): a collective on a CPU tensor (an RNG state, a count) then goes
through gloo instead of stopping the run, and every tensor the trainer reduces lives on its device anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..model.loss import is_distributed
from ..util.distributed_env import torchrun_env

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_group_backend(device: torch.device) -> str:
    """The backend string for a group whose training tensors live on `device`: each device type its carrier."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def backend_devices(backend: str) -> dict[str, str]:
    """Which backend carries which device type: "cpu:gloo,cuda:nccl" -> {"cpu": "gloo", "cuda": "nccl"}."""
    if ":" not in backend:
        return {"gloo": {"cpu": "gloo"}, "nccl": {"cuda": "nccl"}}.get(backend, {"cpu": backend, "cuda": backend})
    return dict(part.split(":", 1) for part in backend.split(","))


def setup_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """This rank's place and device. Under torchrun (WORLD_SIZE > 1) join the process group it describes
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): on CUDA with GPU LOCAL_RANK and NCCL (gloo for CPU
    tensors), gloo otherwise. A group initialised by the caller is reused; a plain `python` run is rank 0 of 1."""
    from ..util.device import resolve_device

    env = torchrun_env()
    local_rank = env.local_rank
    device = resolve_device(device_name)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank), device
    if not env.distributed:
        return DistInfo(), device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(process_group_backend(device))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank), device


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce ("sum", "max" or "min"); a no-op in a single process."""
    if is_distributed():
        dist.all_reduce(t, op=_OPS[op])
    return t


def reduce_scalar(value: float, op: str, device: torch.device) -> float:
    """`value` reduced over ranks ("sum", "max" or "min"), carried as a tensor on the training device."""
    return float(all_reduce_(torch.tensor(float(value), device=device), op).item())


def gather_objects(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order (for RNG states); [obj] in a single process."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()
