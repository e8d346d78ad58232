"""What is trained and how: BatchNorm freezing, locked towers (LiT), and the model config's BN momentum,
drop-path and label smoothing (overridden for a run by writing them into the config, so what trains is what
`final/config.json` records).

`model.train()` would put a frozen BatchNorm or a locked tower back into train mode; the helpers here
register a forward pre-hook that puts the module back in eval mode before every forward, so the freeze
survives any number of `.train()` calls (the trainer's, an evaluation's, a user's).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..model.align import AlignModel


def _stay_in_eval(module: nn.Module, _args: tuple) -> None:
    if module.training:
        module.eval()


def hold_eval(module: nn.Module) -> RemovableHandle:
    """Put `module` (and its children) in eval mode now and before each of its forwards."""
    module.eval()
    return module.register_forward_pre_hook(_stay_in_eval)


def freeze_batchnorm(model: nn.Module) -> list[RemovableHandle]:
    """Every BatchNorm normalises with its running statistics and never updates them, even in train mode.

    Its affine weight and bias still train. Returns the hooks; `handle.remove()` undoes the freeze."""
    return [hold_eval(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def lock_tower(tower: nn.Module) -> RemovableHandle:
    """LiT: no gradients for the tower's parameters, and eval mode (no dropout, BN statistics untouched)."""
    for p in tower.parameters():
        p.requires_grad_(False)
    return hold_eval(tower)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Momentum of every BatchNorm, in PyTorch's convention (weight of the new batch's statistics)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def set_training_knobs(
    model: AlignModel,
    *,
    bn_momentum: float | None = None,
    drop_path_rate: float | None = None,
    label_smoothing: float | None = None,
) -> None:
    """Write the given knobs into `model.config` (the one place they live, saved with the model), then make
    the modules follow the config; None keeps the config's value."""
    vision = model.config.vision
    vision_changes = {
        k: v for k, v in (("bn_momentum", bn_momentum), ("drop_path_rate", drop_path_rate)) if v is not None
    }
    if vision_changes:
        vision = dataclasses.replace(vision, **vision_changes)
    config = model.config.replace(vision=vision)
    if label_smoothing is not None:
        config = config.replace(label_smoothing=label_smoothing)
    model.config = config
    model.vision_model.cfg = vision
    set_bn_momentum(model, vision.bn_momentum)
    model.vision_model.set_drop_path_rate(vision.drop_path_rate)


def batch_prior_bias(global_batch: int) -> float:
    """log(1 / (N - 1)): the sigmoid loss's logit bias at which a pair's prior match probability is that of one
    positive among the N - 1 other captions of a global batch of N (SigLIP's -10 is this for N of ~22,000)."""
    if global_batch < 1:
        raise ValueError(f"the global batch must hold at least one pair, got {global_batch}")
    return -math.log(max(global_batch - 1, 1))


def set_loss(model: AlignModel, loss: str, bias_init: float | None = None) -> None:
    """Train `model` with `loss` ("softmax" or "sigmoid"), recorded in its config. Switching an ALIGN model to
    the sigmoid loss adds SigLIP's logit bias at `bias_init` (default: the config's `logit_bias_init`, -10;
    the value used is recorded there) and keeps the model's temperature; switching back drops the bias."""
    if loss == model.config.loss:
        return
    model.config = model.config.replace(loss=loss)
    if loss == "sigmoid":
        if bias_init is not None:
            model.config = model.config.replace(logit_bias_init=float(bias_init))
        t = model.temperature
        model.logit_bias = nn.Parameter(torch.tensor(model.config.logit_bias_init, dtype=t.dtype, device=t.device))
    else:
        model.logit_bias = None


@torch.no_grad()
def set_logit_start(model: AlignModel, logit_bias: float | None = None, temperature: float | None = None) -> None:
    """Start the learnable temperature and/or a sigmoid model's logit bias at the given values (None keeps the
    model's), recorded in its config as `temperature_init` / `logit_bias_init`."""
    if logit_bias is not None:
        if model.logit_bias is None:
            raise ValueError("a logit bias start needs the sigmoid loss (loss='sigmoid'): this model has no bias")
        model.logit_bias.fill_(float(logit_bias))
        model.config = model.config.replace(logit_bias_init=float(logit_bias))
    if temperature is not None:
        model.temperature.fill_(float(temperature))
        model.config = model.config.replace(temperature_init=float(temperature))


def prepare_model(
    model: AlignModel,
    *,
    bn_momentum: float | None = None,
    drop_path_rate: float | None = None,
    label_smoothing: float | None = None,
    freeze_bn: bool = False,
    lock_image: bool = False,
    lock_text: bool = False,
    grad_checkpointing: bool = False,
    loss: str | None = None,
    logit_bias_init: float | None = None,
    temperature_init: float | None = None,
) -> list[RemovableHandle]:
    """Apply a run's training semantics to a model in place; returns the hooks that hold modules in eval.
    BN momentum, drop-path, label smoothing, the loss and the logits' start (`set_logit_start`) come from
    `model.config` unless given (then recorded there)."""
    set_training_knobs(model, bn_momentum=bn_momentum, drop_path_rate=drop_path_rate, label_smoothing=label_smoothing)
    if loss is not None:
        set_loss(model, loss, logit_bias_init)
    set_logit_start(model, logit_bias_init, temperature_init)
    model.set_grad_checkpointing(grad_checkpointing)
    # ALIGN embeds text from the [CLS] state, never the BERT pooler: a parameter without a gradient would
    # stall DDP, so the pooler is frozen (it is still saved, so checkpoints round-trip).
    model.text_model.pooler.requires_grad_(False)
    image_pooler = getattr(getattr(model.vision_model, "encoder", None), "pooler", None)
    if model.config.image_tower is not None and model.config.image_pooling == "mean" and image_pooler is not None:
        image_pooler.requires_grad_(False)  # a transformers image tower pooled by the mean never runs its pooler
    handles = freeze_batchnorm(model) if freeze_bn else []
    if lock_image:
        handles.append(lock_tower(model.vision_model))
    if lock_text:
        handles.append(lock_tower(model.text_model))
        model.text_projection.requires_grad_(False)
    return handles
