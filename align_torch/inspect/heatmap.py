"""Which image regions drive an image-text similarity: Grad-CAM on one image block w.r.t. the cosine between
the image and text embeddings, upsampled to the input size, and a helper that draws it over the image.

Grad-CAM (Selvaraju et al. 2017): weight each channel c of the block's output A by the spatial mean of
d cos / d A_c, sum over channels and keep the positive part: relu(sum_c mean_hw(d cos / d A_c) * A_c).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..model.align import AlignModel


def similarity_heatmap(
    model: AlignModel,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    *,
    block: int = -1,
    stage: int | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) images and B texts (or one text for all images) -> (B, H, W) maps in [0, 1].

    The map is Grad-CAM on the output of image block `block` (negatives count from the end), or of the
    last block of `stage` when given. Each map is scaled so its maximum is 1 (all zeros when no region
    raises the similarity). The model runs in eval mode; its modes and parameters' gradients are left
    as they were.
    """
    acts, grads = block_gradients(
        model, pixel_values, input_ids, attention_mask, token_type_ids, block=block, stage=stage
    )
    return upsample_map(gradcam(acts, grads), pixel_values.shape[-2:], normalize=True)


def gradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) block output and d cos / d output -> the (B, h, w) Grad-CAM map, unscaled."""
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    return F.relu((weights * acts).sum(dim=1))  # (B, h, w)


def upsample_map(maps: torch.Tensor, size: tuple[int, int] | torch.Size, normalize: bool = False) -> torch.Tensor:
    """(B, h, w) maps -> (B, H, W) by bilinear upsampling, for display over the input. With `normalize`, each map
    is divided by its maximum (all zeros when its maximum is not positive), as `similarity_heatmap` shows it."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be (batch, height, width), got {tuple(maps.shape)}")
    up = F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    if not normalize:
        return up  # (B, H, W)
    peak = up.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    return torch.where(peak > 0, up / peak.clamp_min(torch.finfo(up.dtype).tiny), torch.zeros_like(up))


def block_gradients(
    model: AlignModel,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    *,
    block: int = -1,
    stage: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output A (B, C, h, w) of image block `block` (or of the last block of `stage`) and d cos / d A, where
    cos is each image's cosine with its text (or with the one text). Modes and gradients are left as they were."""
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_values.shape)}")
    if input_ids.ndim != 2 or input_ids.shape[0] not in (1, pixel_values.shape[0]):
        raise ValueError(
            f"input_ids must be (1 or {pixel_values.shape[0]} texts, tokens) for {pixel_values.shape[0]} images, "
            f"got {tuple(input_ids.shape)}"
        )
    target = _target_block(model, block, stage)
    captured: list[torch.Tensor] = []

    def capture(_m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        # A leaf that requires grad: d cos / d A is then defined even for a frozen (or fused) model, and no
        # gradient flows into the blocks before it.
        a = out.detach().requires_grad_(True)
        captured.append(a)
        return a

    modes = {m: m.training for m in model.modules()}
    model.eval()
    handle = target.register_forward_hook(capture)
    try:
        with torch.no_grad():
            text = model.encode_text(input_ids, attention_mask, token_type_ids, normalize=True)  # (1 or B, P)
        with torch.enable_grad():
            image = model.encode_image(pixel_values, normalize=True)  # (B, P)
            cosine = (image * text).sum(dim=-1)  # (B,)
            (grads,) = torch.autograd.grad(cosine.sum(), captured[0])  # samples are independent in eval mode
    finally:
        handle.remove()
        for m, training in modes.items():
            m.train(training)
    return captured[0].detach(), grads


def _target_block(model: AlignModel, block: int, stage: int | None) -> nn.Module:
    blocks = model.vision_model.blocks
    if stage is not None:
        ends = model.vision_model.stage_ends
        if not -len(ends) <= stage < len(ends):
            raise IndexError(f"stage {stage} out of range for {len(ends)} stages")
        return blocks[ends[stage]]
    if not -len(blocks) <= block < len(blocks):
        raise IndexError(f"block {block} out of range for {len(blocks)} blocks")
    return blocks[block]


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
