"""Argument checks for AlignModel's entry points: a bad input is named with its valid range before any kernel
runs (an out-of-range id would otherwise be a CUDA device-side assert, or an IndexError deep in BERT)."""

from __future__ import annotations

import functools

import torch

from .config import TextConfig, VisionConfig

# transformers' keyword flags that change what its AlignModel returns; accepted only at their default values.
_TRANSFORMERS_FLAGS: dict[str, tuple[object, ...]] = {
    "output_hidden_states": (None, False),
    "output_attentions": (None, False),
    "return_dict": (None, True),
    "interpolate_pos_encoding": (None, False),
    "position_ids": (None,),
    "head_mask": (None,),
    "inputs_embeds": (None,),
}


def check_kwargs(method: str, kwargs: dict[str, object]) -> None:
    """Refuse keyword arguments `method` does not take: unknown names are a TypeError (a typo such as
    `attention_masks=` would otherwise drop the mask), transformers' flags at a non-default value a ValueError."""
    unknown = sorted(k for k in kwargs if k not in _TRANSFORMERS_FLAGS)
    if unknown:
        raise TypeError(f"AlignModel.{method} got unexpected keyword arguments: {', '.join(unknown)}")
    unsupported = sorted(k for k, v in kwargs.items() if not any(v is d for d in _TRANSFORMERS_FLAGS[k]))
    if unsupported:
        raise ValueError(
            f"AlignModel.{method} does not support {', '.join(f'{k}={kwargs[k]!r}' for k in unsupported)}: it "
            "returns the tensor the model card uses. For hidden states and attention probabilities call the model "
            "(forward's output_hidden_states / output_attentions) or model.forward_intermediates(...)"
        )


def check_text(
    cfg: TextConfig,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
) -> None:
    """input_ids (B, T) integer ids in [0, vocab_size), T <= max_position_embeddings, B >= 1; the mask and token
    types of the same shape, token types in [0, type_vocab_size)."""
    if input_ids is None:
        raise ValueError("input_ids is required: (batch, tokens) int64 token ids, e.g. from AlignProcessor(text=...)")
    _check_ids("input_ids", input_ids, cfg.vocab_size, "vocab_size")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    if batch == 0:
        raise ValueError("input_ids is an empty batch (0 texts); pass at least one text")
    if length > cfg.max_position_embeddings:
        raise ValueError(
            f"input_ids: text of {length} tokens is longer than the model's {cfg.max_position_embeddings} positions "
            f"(max_position_embeddings; valid lengths 1 to {cfg.max_position_embeddings})"
        )
    if length == 0:
        raise ValueError("input_ids has 0 tokens per text; pass at least [CLS] (1 to max_position_embeddings)")
    for name, tensor in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if tensor is not None and tuple(tensor.shape) != tuple(input_ids.shape):
            raise ValueError(f"{name} shape {tuple(tensor.shape)} != input_ids shape {tuple(input_ids.shape)}")
    if token_type_ids is not None:
        _check_ids("token_type_ids", token_type_ids, cfg.type_vocab_size, "type_vocab_size")


def _check_ids(name: str, ids: torch.Tensor, size: int, field: str) -> None:
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        what = type(ids).__name__ if not isinstance(ids, torch.Tensor) else f"a {ids.dtype} tensor"
        raise ValueError(f"{name} must be an integer tensor, got {what}")
    if ids.numel() == 0 or torch.compiler.is_compiling():
        return  # reading the values would break a compiled graph; the embedding lookup still fails on a bad id
    low, high = (int(v) for v in torch.aminmax(ids))  # one reduction, one device sync
    if low < 0 or high >= size:
        raise ValueError(f"{name} must lie in [0, {size - 1}] ({field} = {size}), got values in [{low}, {high}]")


def check_pixels(cfg: VisionConfig, pixel_values: torch.Tensor | None) -> None:
    """pixel_values (B, in_chans, H, W) floating point, B >= 1, H and W at least the tower's smallest input."""
    if pixel_values is None:
        raise ValueError(
            "pixel_values is required: (batch, 3, height, width) floats, e.g. from AlignProcessor(images=...)"
        )
    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
        what = type(pixel_values).__name__ if not isinstance(pixel_values, torch.Tensor) else pixel_values.dtype
        raise ValueError(f"pixel_values must be a floating-point tensor, got {what}")
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_values.shape)}")
    batch, channels, height, width = pixel_values.shape
    if batch == 0:
        raise ValueError("pixel_values is an empty batch (0 images); pass at least one image")
    if channels != cfg.in_chans:
        raise ValueError(f"pixel_values has {channels} channels; the image tower takes {cfg.in_chans} (in_chans)")
    smallest = min_image_size(cfg)
    if height < smallest or width < smallest:
        raise ValueError(
            f"pixel_values is {height}×{width}; the image tower needs at least {smallest}×{smallest} "
            f"(trained at {cfg.image_size}×{cfg.image_size})"
        )


def check_batches(text_batch: int, image_batch: int) -> None:
    """The contrastive loss pairs text i with image i."""
    if text_batch != image_batch:
        raise ValueError(
            f"return_loss needs as many texts as images (text i is image i's caption), got input_ids batch "
            f"{text_batch} and pixel_values batch {image_batch}"
        )


@functools.lru_cache(maxsize=32)
def min_image_size(cfg: VisionConfig) -> int:
    """The smallest side every stride-2 convolution of the tower still gives at least one pixel for."""
    for size in range(1, 4096):
        if _final_size(cfg, size) >= 1:
            return size
    raise ValueError(f"no input size up to 4096 fits the image tower {cfg}")


def _final_size(cfg: VisionConfig, size: int) -> int:
    # Stem: pad right/bottom by one, then a "valid" 3×3 stride-2 conv (efficientnet.Stem).
    size = (size + 1 - 3) // 2 + 1
    block = 0
    for stage in cfg.stages:
        for j in range(cfg.repeats(stage.repeats)):
            if size < 1:
                return size
            if j == 0 and stage.stride == 2:
                k = stage.kernel
                # Depthwise padding: symmetric k//2 each side, or transformers' (k//2 - 1, k//2).
                pad = 2 * (k // 2) if block in cfg.symmetric_pad else k - 2
                size = (size + pad - k) // 2 + 1
            block += 1
    return size
