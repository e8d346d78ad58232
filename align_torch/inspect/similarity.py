"""Where in the image an image-text cosine comes from, as (B, h, w) maps at a feature map's resolution.

"exact": ALIGN's image embedding is the spatial mean of the last feature map F (B, C, h, w), then a projection
that is linear (the identity for ALIGN's own configs). So with g_l = P(F_l) the projected feature at location l
(P(x) = W x + b: the bias is shared by the h*w locations, so the mean still passes through it),

    cos(img, txt) = mean_l(g_l) . t / |mean_l(g_l)| = sum_l g_l . t / (h w |img|),   t = txt / |txt|,

and the map m_l = g_l . t / (h w |img|) sums to the cosine exactly: no gradient, no approximation.
"gradcam" (Selvaraju et al. 2017, any block or stage) and "gradient_x_input" (sum over channels of
A * d cos / d A at any block) are the usual gradient maps, for comparison. Upsampling to the input for display
is `upsample_map`.

A transformers image tower (`--image-tower hf:`) pools its own way (a pooler, a layer norm after the mean), so
the exact map's assumption fails: "exact" then gives Grad-CAM on its last hidden state, with a warning, and
`block` / `stage` pick its hidden states as `forward_intermediates` counts them.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..model.align import AlignModel
from ..model.hf_image import HFImageTower
from .hooks import eval_then_restore

METHODS = ("exact", "gradcam", "gradient_x_input")

__all__ = ["METHODS", "similarity_map", "upsample_map"]


def similarity_map(
    model: AlignModel,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    method: str = "exact",
    *,
    block: int = -1,
    stage: int | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) images and B texts (or one for all) -> (B, h, w) float32 maps.

    "exact": contributions of each location of the last feature map that sum to the image-text cosine.
    "gradcam" / "gradient_x_input": at image block `block` (or the last block of `stage`), unscaled.
    The model's modes and gradients are left as they were.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    hf_tower = isinstance(model.vision_model, HFImageTower)
    if hf_tower and method == "exact":
        warnings.warn(
            f"the exact map needs ALIGN's mean-pooled EfficientNet map; the image tower "
            f"{model.config.image_tower} pools its own way, so this is Grad-CAM on its last hidden state",
            stacklevel=2,
        )
        method = "gradcam"
    if method == "exact" and (block, stage) != (-1, None):
        raise ValueError("the exact map is defined on the last feature map only: leave block and stage unset")
    check_images_and_texts(pixel_values, input_ids)
    with eval_then_restore(model), torch.no_grad():
        text = model.encode_text(input_ids, attention_mask, token_type_ids, normalize=True)  # (1 or B, P)
    if method == "exact":
        return exact_map(model, pixel_values, text)
    if hf_tower:
        acts, grads = hidden_state_gradients(model, pixel_values, text, block if stage is None else stage + 1)
    else:
        acts, grads = block_gradients(model, pixel_values, text, block=block, stage=stage)
    return (gradcam(acts, grads) if method == "gradcam" else (acts * grads).sum(dim=1)).float()  # (B, h, w)


def check_images_and_texts(pixel_values: torch.Tensor, input_ids: torch.Tensor) -> None:
    """The inputs every map and curve takes: (B, 3, H, W) images and B texts, or one text for all images."""
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_values.shape)}")
    if input_ids.ndim != 2 or input_ids.shape[0] not in (1, pixel_values.shape[0]):
        raise ValueError(
            f"input_ids must be (1 or {pixel_values.shape[0]} texts, tokens) for {pixel_values.shape[0]} images, "
            f"got {tuple(input_ids.shape)}"
        )


def exact_map(model: AlignModel, pixel_values: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The "exact" method of `similarity_map`: (B, h, w) contributions summing to each image's cosine with its row
    of the unit text embeddings `text` (1 or B, P) (float32)."""
    if model.vision_model.cfg.pooling != "mean":
        raise ValueError(
            f"the exact map needs mean pooling (the embedding is then a sum over locations); this model's "
            f"VisionConfig.pooling is {model.vision_model.cfg.pooling!r}"
        )
    text = text.float()
    with eval_then_restore(model), torch.no_grad():
        fmap = model.vision_model.forward_features(pixel_values).float()  # (B, C, h, w)
    B, C, h, w = fmap.shape
    feats = fmap.flatten(2).transpose(1, 2)  # (B, hw, C)
    proj = model.image_projection
    if proj is not None:
        feats = F.linear(feats, proj.weight.float(), None if proj.bias is None else proj.bias.float())  # (B, hw, P)
    image = feats.mean(dim=1)  # (B, P): the un-normalised image embedding
    per_location = (feats @ text.unsqueeze(-1).expand(B, -1, 1))[..., 0]  # (B, hw): g_l . t
    contributions = per_location / (h * w * image.norm(dim=-1, keepdim=True))  # (B, hw)
    return contributions.view(B, h, w)


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
    model: AlignModel, pixel_values: torch.Tensor, text: torch.Tensor, *, block: int = -1, stage: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output A (B, C, h, w) of image block `block` (or of the last block of `stage`) and d cos / d A, where
    cos is each image's cosine with its row of the unit text embeddings `text` (1 or B, P). Modes and gradients
    are left as they were."""
    target = _target_block(model, block, stage)
    captured: list[torch.Tensor] = []

    def capture(_m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        # A leaf that requires grad: d cos / d A is then defined even for a frozen (or fused) model, and no
        # gradient flows into the blocks before it.
        a = out.detach().requires_grad_(True)
        captured.append(a)
        return a

    handle = target.register_forward_hook(capture)
    try:
        with eval_then_restore(model), torch.enable_grad():
            image = model.encode_image(pixel_values, normalize=True)  # (B, P)
            cosine = (image * text).sum(dim=-1)  # (B,)
            (grads,) = torch.autograd.grad(cosine.sum(), captured[0])  # samples are independent in eval mode
    finally:
        handle.remove()
    return captured[0].detach(), grads


def hidden_state_gradients(
    model: AlignModel, pixel_values: torch.Tensor, text: torch.Tensor, position: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """For a transformers image tower: its hidden state A at `position` (as forward_intermediates counts them)
    as a (B, C, h, w) map, and d cos / d A (cos with the unit text embeddings `text`, (1 or B, P)). A ViT's
    (B, T, C) tokens become a square grid of the last h * w tokens (the class and register tokens before them
    are left out). Modes are left as they were."""
    with eval_then_restore(model), torch.enable_grad():
        tower = model.vision_model
        out = tower.encoder(pixel_values=pixel_values, output_hidden_states=True)
        hidden = out.hidden_states[position]
        image = model.project_image(tower.pool_output(out), normalize=True)  # (B, P)
        (grads,) = torch.autograd.grad((image * text).sum(), hidden)
    return _as_map(hidden.detach()), _as_map(grads)


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) as it is; (B, T, C) tokens -> (B, C, s, s) from the last s * s of them."""
    if x.ndim == 4:
        return x
    side = math.isqrt(x.shape[1])
    return x[:, x.shape[1] - side * side :].transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


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
