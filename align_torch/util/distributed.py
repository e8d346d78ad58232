"""Ranks and collectives in one place: torchrun's environment, the device of each rank, joining the process
group, and one padded all-gather (with or without gradient) that the loss, evaluation, the embeddings folder
and the trainer all use.

torchrun (and `srun torchrun`) sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address MASTER_ADDR /
MASTER_PORT for every process it starts; a plain `python` run sets none of them and is rank 0 of 1.

NCCL carries only CUDA tensors and gloo only CPU tensors, so a CUDA run creates its process group with one
backend per device ("cpu:gloo,cuda:nccl"): a collective on a CPU tensor (an RNG state, a count) then goes
through gloo instead of stopping the run, and every tensor the trainer reduces lives on its device anyway.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .device import resolve_device

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


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

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes shared files and prints."""
        return self.rank == 0


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


# --- the device of each rank and the process group --------------------------------------------------------
def rank_device(device_name: str, env: TorchrunEnv | None = None) -> torch.device:
    """The device this process runs on: `device_name` resolved ("auto" picks), and on CUDA the GPU LOCAL_RANK
    (one GPU per process), made current."""
    env = env or torchrun_env()
    device = resolve_device(device_name)
    if device.type == "cuda" and env.distributed:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    return device


def process_group_backend(device: torch.device) -> str:
    """The backend string for a group whose training tensors live on `device`: each device type its carrier."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def backend_devices(backend: str) -> dict[str, str]:
    """Which backend carries which device type: "cpu:gloo,cuda:nccl" -> {"cpu": "gloo", "cuda": "nccl"}."""
    if ":" not in backend:
        return {"gloo": {"cpu": "gloo"}, "nccl": {"cuda": "nccl"}}.get(backend, {"cpu": backend, "cuda": backend})
    return dict(part.split(":", 1) for part in backend.split(","))


def setup_distributed(device_name: str) -> tuple[TorchrunEnv, torch.device]:
    """This rank's place and device. Under torchrun (WORLD_SIZE > 1) join the process group it describes
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): on CUDA with GPU LOCAL_RANK and NCCL (gloo for CPU
    tensors), gloo otherwise. A group initialised by the caller is reused; a plain `python` run is rank 0 of 1."""
    env = torchrun_env()
    if dist.is_available() and dist.is_initialized():
        return dataclasses.replace(env, rank=dist.get_rank(), world=dist.get_world_size()), resolve_device(device_name)
    device = rank_device(device_name, env)
    if not env.distributed:
        return env, device
    dist.init_process_group(process_group_backend(device))
    return dataclasses.replace(env, rank=dist.get_rank(), world=dist.get_world_size()), device


def is_distributed() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world(distributed: bool = True) -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) when not `distributed` or not joined."""
    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device() -> torch.device:
    """Where a tensor must live for the group's default backend: NCCL carries CUDA tensors only, gloo (and a
    "cpu:gloo,cuda:nccl" group's CPU half) CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- collectives (each a no-op in a single process) -------------------------------------------------------
def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce ("sum", "max" or "min"); a no-op in a single process."""
    if is_distributed():
        dist.all_reduce(t, op=_OPS[op])
    return t


def reduce_scalar(value: float, op: str, device: torch.device) -> float:
    """`value` reduced over ranks ("sum", "max" or "min"), carried as a tensor on the training device."""
    return float(all_reduce_(torch.tensor(float(value), device=device), op).item())


def gather_objects(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order (RNG states, paths, failure reasons); [obj] in a single process."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def row_counts(rows: int, device: torch.device) -> list[int]:
    """Every rank's number of rows, in rank order."""
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([rows], device=device))
    return [int(s) for s in sizes]


def _padded_all_gather(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """(b_r, D) on each rank -> ((sum of b_r, D) in rank order, [b_0, b_1, ...]); ranks may differ in rows."""
    counts = row_counts(x.shape[0], x.device)
    padded = x.new_zeros((max(counts), *x.shape[1:]))  # (max_rows, D): all_gather needs equal shapes
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)]), counts


class _GatherWithGrad(torch.autograd.Function):
    """The padded all-gather whose backward sends each rank the summed gradient of its own rows from every
    rank's loss. Written out rather than torch.distributed.nn.all_gather because that one's backward needs
    reduce-scatter or all-to-all, which gloo (the CPU backend) lacks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        gathered, ctx.counts = _padded_all_gather(x)
        ctx.rank = dist.get_rank()
        return gathered  # (sum(counts), D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss reads every rank's rows
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]]


def gather_rows(x: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
    """(b_r, D) on each rank -> (sum of b_r, D) on every rank, rank 0's rows first; the identity in a single
    process. With `grad` the result is differentiable (the loss over the global batch)."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x) if grad else _padded_all_gather(x)[0]
