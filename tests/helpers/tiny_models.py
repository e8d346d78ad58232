"""The tiny models of the training-step tests: align-tiny with BatchNorm calibrated on one batch and then frozen,
so a step's loss and gradients do not depend on how a batch is split (across ranks, micro-batches or chunks)."""

from __future__ import annotations

import dataclasses

import torch

from align_torch import AlignModel
from align_torch.model.config import align_tiny
from align_torch.train.modes import prepare_model


def calibrated_tiny(
    loss: str = "softmax",
    *,
    dtype: torch.dtype = torch.float64,
    image_size: int = 32,
    noise: bool = False,
    calibration_rows: int = 16,
) -> AlignModel:
    """align-tiny in train mode, seeded, with BatchNorm holding the statistics of one random batch (momentum 1)
    and frozen: a fresh model's running statistics (0 and 1) would blow activations and gradients up to ~1e9.
    Dropout and drop-path are off unless `noise` (then 0.1 and 0.5). Float64 by default, so comparisons
    measure the method, not float32 rounding of a different summation order."""
    torch.manual_seed(0)
    cfg = align_tiny()
    rate = 0.1 if noise else 0.0
    text = dataclasses.replace(cfg.text, hidden_dropout=rate, attention_dropout=rate)
    vision = dataclasses.replace(cfg.vision, image_size=image_size, drop_path_rate=0.5 if noise else 0.0)
    model = AlignModel(cfg.replace(text=text, vision=vision, loss=loss)).to(dtype).train()
    prepare_model(model, bn_momentum=1.0, drop_path_rate=vision.drop_path_rate)
    calibration = torch.randn(
        calibration_rows, 3, image_size, image_size, generator=torch.Generator().manual_seed(2), dtype=dtype
    )
    with torch.no_grad():
        model.encode_image(calibration)
    prepare_model(model, freeze_bn=True, drop_path_rate=vision.drop_path_rate)
    return model.train()


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of each parameter's gradient, by name (parameters without one are left out)."""
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
