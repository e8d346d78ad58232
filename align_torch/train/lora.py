"""LoRA (Hu et al. 2021) through peft: low-rank adapters on chosen nn.Linear / 1x1 nn.Conv2d layers, the
rest of the model frozen. `merged_copy` folds the adapters into plain weights, so a LoRA run's final/ is an
ordinary checkpoint; `save_adapters` writes the adapters alone, in peft's file layout.

peft is an optional extra: `pip install -e ".[lora]"` in the clone.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..util.fileio import atomic_dir

# BERT's attention projections and EfficientNet's 1x1 expand/project convolutions (by module name).
DEFAULT_TARGETS = ("q", "k", "v", "out", "expand_conv", "project_conv")
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class TrainableCount:
    """Parameters that receive gradients after add_lora, against the whole model (adapters included)."""

    trainable: int
    total: int

    def __str__(self) -> str:
        return f"{self.trainable:,} of {self.total:,} parameters train ({100 * self.trainable / self.total:.2f}%)"


def _peft():
    try:
        import peft
    except ImportError as e:
        raise ImportError('LoRA needs peft: pip install peft (or pip install -e ".[lora]" in the clone)') from e
    return peft


def count_trainable(model: nn.Module) -> TrainableCount:
    params = list(model.parameters())
    return TrainableCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    freeze_head: bool = False,
) -> TrainableCount:
    """Inject rank-`rank` adapters (scale alpha / rank; alpha defaults to rank) into every layer named in
    `targets`, in place; freeze everything else except, unless `freeze_head`, the text/image projections and
    the temperature (and a sigmoid-loss model's logit bias)."""
    if rank < 1:
        raise ValueError(f"lora rank must be at least 1, got {rank}")
    peft = _peft()
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    unknown = sorted(set(targets) - names)
    if unknown:
        raise ValueError(f"lora targets {unknown} name no module of this model")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets), lora_dropout=0.0)
    peft.inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    if not freeze_head:
        model.temperature.requires_grad_(True)
        if getattr(model, "logit_bias", None) is not None:  # the sigmoid loss's bias belongs to the head
            model.logit_bias.requires_grad_(True)
        for head in ("text_projection", "image_projection"):
            if isinstance(getattr(model, head, None), nn.Module):
                getattr(model, head).requires_grad_(True)
    return count_trainable(model)


def has_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with every adapter folded into its layer's weight and the plain layer put back."""
    lora_layer = _peft().tuners.lora.LoraLayer
    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        if isinstance(module, lora_layer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent), child, module.get_base_layer())
    del merged.peft_config
    return merged


def _is_adapters_dir(path: Path) -> bool:
    """Only an earlier adapters folder may be replaced (a resumed run writes it again)."""
    return (path / ADAPTER_FILE).is_file()


def save_adapters(model: nn.Module, folder: str | os.PathLike) -> Path:
    """The adapters (and trained head, if any) alone: adapter_model.safetensors + adapter_config.json."""
    from safetensors.torch import save_file

    peft = _peft()
    state = peft.get_peft_model_state_dict(model)
    head = {n: p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    tensors = {k: v.detach().contiguous().cpu() for k, v in {**state, **head}.items()}
    config = model.peft_config["default"].to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    config["trained_head"] = sorted(head)
    with atomic_dir(folder, overwrite=True, replaceable=_is_adapters_dir, what="LoRA adapters folder") as tmp:
        save_file(tensors, tmp / ADAPTER_FILE, metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")
    return Path(folder)
