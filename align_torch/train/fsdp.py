"""`finetune --fsdp`: FSDP2 (torch.distributed.fsdp.fully_shard) in place of DDP. Each MBConv block of the image
tower and each layer of the text tower is its own unit (its parameters gathered for its forward and backward,
then freed), the rest (stem, embeddings, projections, temperature) the root unit; gradients are reduce-scattered
and averaged as DDP averages them, so a step equals the DDP step. On CUDA with `--precision bf16` the units
compute in bf16 and reduce in float32 (MixedPrecisionPolicy).

Checkpoints and final/ gather the full weights and optimiser state to rank 0 and write the usual files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _units(model: nn.Module) -> list[nn.Module]:
    """The blocks of both towers: EfficientNet's MBConv blocks, BERT's layers (or a transformers encoder's)."""
    units = list(model.vision_model.blocks)
    text = model.text_model
    layers = getattr(text, "layers", None)
    if layers is None:  # a transformers tower (--text-tower hf:): its encoder's layer list
        encoder = getattr(text.encoder, "encoder", None)
        layers = getattr(encoder, "layer", None) or getattr(encoder, "layers", None) or []
    return units + list(layers)


def shard_model(model: nn.Module, device: torch.device, precision: str = "fp32") -> list[nn.Parameter]:
    """Shard `model` in place across the default process group, one FSDP unit per block, then the root.

    FSDP2 shards no 0-dim tensor: the temperature (and a sigmoid model's logit bias) stay whole on every rank,
    outside FSDP; they are returned, and `average_replicated_grads` must average their gradients after
    backward as DDP would."""
    policy = MixedPrecisionPolicy()
    if device.type == "cuda" and precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    # Rank 0's weights everywhere first, as DDP does: each rank seeds differently, so anything initialised at
    # random after loading (a new text projection) differs between ranks, and each rank keeps its own shard.
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            dist.broadcast(t, src=0)
    scalars = [p for p in model.parameters() if p.ndim == 0]
    for unit in _units(model):
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy, ignored_params=set(scalars))
    return scalars


def average_replicated_grads(params: list[nn.Parameter]) -> None:
    """Average the gradients of the parameters FSDP left whole (see shard_model) over the ranks."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def local_parameter_count(model: nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model)."""
    local = total = 0
    for p in model.parameters():
        local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
        total += p.numel()
    return local, total


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on the CPU of rank 0 (empty elsewhere); a collective."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser state in torch's own layout (parameters numbered in group order), whole, on rank 0."""
    named = get_optimizer_state_dict(model, optimizer, options=_FULL)
    if not named:
        return {"state": {}, "param_groups": []}
    index = {name: i for i, name in enumerate(_optimizer_order(model, optimizer))}
    groups, start = [], 0
    for group in named["param_groups"]:
        groups.append({**group, "params": list(range(start, start + len(group["params"])))})
        start += len(group["params"])
    return {"state": {index[name]: value for name, value in named["state"].items()}, "param_groups": groups}


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, torch.Tensor], optim_state: dict
) -> None:
    """Put whole (unsharded) model and optimiser states, as a checkpoint holds them, into the sharded model."""
    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True))
    names = _optimizer_order(model, optimizer)
    groups, start = [], 0
    for group in optim_state["param_groups"]:
        groups.append({**group, "params": names[start : start + len(group["params"])]})
        start += len(group["params"])
    named = {"state": {names[int(i)]: value for i, value in optim_state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))


def _optimizer_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the order torch numbers them in optimizer.state_dict() (group by group)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def clip_grad_norm(model: nn.Module, max_norm: float, replicated: list[nn.Parameter]) -> float:
    """clip_grad_norm_ for a sharded model: the global norm adds every rank's squared shard norms (an
    all-reduce) to the whole parameters' squares (the same on every rank, counted once)."""
    kept = {id(p) for p in replicated}
    sharded = [p.grad.to_local() for p in model.parameters() if p.grad is not None and id(p) not in kept]
    whole = [p.grad for p in replicated if p.grad is not None]
    square = sum((g.double().pow(2).sum() for g in sharded), torch.zeros((), dtype=torch.float64))
    dist.all_reduce(square)
    square = square + sum((g.double().pow(2).sum() for g in whole), torch.zeros((), dtype=torch.float64))
    norm = float(square.sqrt())
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
    return norm


@dataclass
class GatheredModel:
    """A sharded model's config and whole state dict (rank 0), standing in for the model when writing final/."""

    config: Any
    tensors: dict[str, torch.Tensor]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.tensors
