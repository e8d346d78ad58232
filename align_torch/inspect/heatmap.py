"""Which image regions drive an image-text similarity, for display: a map of align_torch.inspect.similarity
upsampled to the input size, and helpers that draw it over the image."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..model.align import AlignModel
from .similarity import similarity_map, upsample_map


def similarity_heatmap(
    model: AlignModel,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    *,
    method: str | None = None,
    block: int = -1,
    stage: int | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) images and B texts (or one text for all images) -> (B, H, W) maps in [0, 1].

    `method` is one of `similarity_map`'s: by default "exact" (each location's share of the cosine, the most
    faithful map in the deletion/insertion table of docs/internals.md), or "gradcam" when a `block` or `stage`
    is asked for (Grad-CAM on the output of image block `block`, negatives counting from the end, or of the last block of
    `stage`). The positive part of each map is upsampled and scaled so its maximum is 1 (all zeros when no
    region raises the similarity). The model runs in eval mode; its modes and parameters' gradients are left
    as they were.
    """
    if method is None:
        method = "exact" if (block, stage) == (-1, None) else "gradcam"
    maps = similarity_map(
        model, pixel_values, input_ids, attention_mask, token_type_ids, method, block=block, stage=stage
    )  # (B, h, w)
    return upsample_map(maps.clamp_min(0), pixel_values.shape[-2:], normalize=True)


def to_image(pixel_values: torch.Tensor) -> Image.Image:
    """One (3, H, W) model input back to a PIL image, undoing align-base's x / 127.5 - 1 rescale: the exact
    crop the model (and the heatmap) saw."""
    if pixel_values.ndim != 3 or pixel_values.shape[0] != 3:
        raise ValueError(f"expected one (3, height, width) image, got {tuple(pixel_values.shape)}")
    rgb = ((pixel_values.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(rgb.permute(1, 2, 0).numpy())  # (H, W, 3)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 "jet" colours: blue (0) through green to red (1)."""
    x = np.clip(heatmap, 0.0, 1.0)[..., None]  # (H, W, 1)
    centres = np.array([0.75, 0.5, 0.25])  # where red, green and blue peak
    rgb = np.clip(1.5 - np.abs(4 * (x - centres)), 0.0, 1.0)  # (H, W, 3)
    return (rgb * 255).round().astype(np.uint8)


def overlay(image: Image.Image | np.ndarray, heatmap: torch.Tensor | np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a (H, W) heatmap in [0, 1], resized to the image, over an RGB image: alpha 0 is the image
    alone, 1 the colours alone."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = Image.fromarray(np.asarray(image)) if not isinstance(image, Image.Image) else image
    heat = heatmap.detach().float().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be (height, width), got shape {heat.shape}")
    heat = np.asarray(Image.fromarray(heat.astype(np.float32)).resize(image.size, Image.BILINEAR))
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    blended = (1 - alpha) * rgb + alpha * colorize(heat).astype(np.float32)
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
