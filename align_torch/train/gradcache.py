"""GradCache (Gao et al. 2021): a contrastive step over B pairs whose activation memory grows with the chunk
size M, not with B.

1. Embed the batch in chunks of M without autograd, keeping only the (B, P) embeddings and the RNG state
   each chunk started from.
2. Compute the loss over all B (and over every rank, through the differentiable gather) on detached copies
   of the embeddings and the temperature, and take its gradient with respect to them.
3. Re-run each chunk with autograd from its saved RNG state, so dropout and drop-path draw the same masks,
   and back-propagate the chunk's slice of the embedding gradient: sum(embeds * grad) has exactly the
   parameter gradient of the full loss through that chunk.

BatchNorm in train mode normalises each chunk by that chunk's statistics, so the result equals a plain step
only with frozen BatchNorm (`freeze_bn`); it always equals running the same chunks forward with autograd
and back-propagating the full loss once. Running statistics are updated once per chunk (by step 1): the
replay puts them back as it found them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..model.loss import DUPLICATE_CAPTIONS, duplicate_groups, global_loss
from .data import Batch


@dataclass(frozen=True)
class RngState:
    """The generators dropout and drop-path draw from: the CPU one and, on CUDA, the device's."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda)

    def restore(self, device: torch.device) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, device)


def embed_pairs(model: nn.Module, batch: Batch, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(text, image) L2-normalised embeddings, each (b, P), through `model`'s forward (so DDP's); bf16
    outputs are widened to float32 for the loss, float64 ones (a double model) kept."""
    with torch.autocast(batch.pixel_values.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(
            input_ids=batch.input_ids,
            pixel_values=batch.pixel_values,
            attention_mask=batch.attention_mask,
            token_type_ids=batch.token_type_ids,
        )
    return _widen(out.text_embeds), _widen(out.image_embeds)


def caption_groups(batch: Batch, duplicate_captions: str) -> torch.Tensor | None:
    """The (N,) caption groups of the global batch when pairs with identical captions are positives of each
    other (`duplicate_captions="positive"`), None when each pair is the only positive of its row
    ("negative"). A collective under DDP: every rank calls it for every contrastive batch."""
    if duplicate_captions not in DUPLICATE_CAPTIONS:
        raise ValueError(f"duplicate_captions must be one of {DUPLICATE_CAPTIONS}, got {duplicate_captions!r}")
    if duplicate_captions == "negative":
        return None
    return duplicate_groups(batch.input_ids, batch.attention_mask)


def _widen(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def chunk_bounds(rows: int, micro_batch_size: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering `rows` in chunks of `micro_batch_size` (the last may be shorter)."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be at least 1, got {micro_batch_size}")
    return [(i, min(i + micro_batch_size, rows)) for i in range(0, rows, micro_batch_size)]


def _batchnorm_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (buf, buf.detach().clone())
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for buf in m.buffers()
    ]


def gradcache_backward(
    model: nn.Module,
    batch: Batch,
    temperature: nn.Parameter,
    label_smoothing: float,
    micro_batch_size: int,
    precision: str = "fp32",
    *,
    scale: float = 1.0,
    sync: bool = True,
    check_loss: Callable[[torch.Tensor], None] | None = None,
    logit_bias: nn.Parameter | None = None,
    exchange: str = "gather",
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Accumulate into .grad `scale` times the gradient of the global loss over `batch` (this rank's share, as
    global_loss: ALIGN's, or SigLIP's with a `logit_bias`; `groups` as there), computed chunk by chunk; returns
    the loss (detached).

    `model` may be DDP-wrapped: gradients are then averaged across ranks on the last chunk's backward, or
    on none with `sync=False` (for gradient accumulation). `check_loss` sees the loss before any backward."""
    device = batch.pixel_values.device
    bounds = chunk_bounds(len(batch), micro_batch_size)
    states, texts, images = [], [], []
    with torch.no_grad():
        for start, stop in bounds:
            states.append(RngState.capture(device))
            text, image = embed_pairs(model, batch.rows(start, stop), precision)
            texts.append(text)
            images.append(image)
    after = RngState.capture(device)

    text = torch.cat(texts).requires_grad_()  # (B, P)
    image = torch.cat(images).requires_grad_()  # (B, P)
    temp = temperature.detach().to(text.dtype).requires_grad_()
    bias = None if logit_bias is None else logit_bias.detach().to(text.dtype).requires_grad_()
    loss = global_loss(text, image, temp, bias, label_smoothing, exchange, groups)
    if check_loss is not None:
        check_loss(loss)
    loss.backward()  # under DDP this all-reduces the gathered rows' gradient: every rank's loss reads ours

    ddp = model if isinstance(model, DistributedDataParallel) else None
    saved = _batchnorm_buffers(model)
    for k, ((start, stop), state) in enumerate(zip(bounds, states, strict=True)):
        last = k == len(bounds) - 1
        state.restore(device)
        with ddp.no_sync() if ddp is not None and not (sync and last) else contextlib.nullcontext():
            text_k, image_k = embed_pairs(model, batch.rows(start, stop), precision)
            surrogate = (text_k * text.grad[start:stop]).sum() + (image_k * image.grad[start:stop]).sum()
            if last and temperature.requires_grad:
                # In the last backward, so DDP sees the temperature's gradient when it averages the rest.
                surrogate = surrogate + temperature.to(temp.dtype) * temp.grad
            if last and logit_bias is not None and logit_bias.requires_grad:
                surrogate = surrogate + logit_bias.to(bias.dtype) * bias.grad
            (surrogate * scale).backward()
    for buf, value in saved:
        buf.copy_(value)
    after.restore(device)
    return loss.detach()
