"""Is a similarity map faithful? Remove (deletion) or reveal (insertion) image regions in the order the map
ranks them and record the image-text cosine after each step (Petsiuk et al. 2018, RISE).

The regions are the map's cells (a (h, w) map splits the image into h x w blocks by nearest-neighbour
upsampling). A removed region is set to `baseline` in the model's input space (0: mid-grey for ALIGN's
x / 127.5 - 1 rescale). The curve is sampled at `steps` + 1 evenly spaced fractions of the cells, and its area
(trapezoid rule over the fraction removed or revealed, in [0, 1]) is one number per pair: for deletion, lower
means the map found what the cosine rests on; for insertion, higher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.align import AlignModel
from .hooks import eval_then_restore
from .similarity import check_images_and_texts, similarity_map


@dataclass
class FaithfulnessCurve:
    fractions: torch.Tensor  # (S + 1,) fraction of the cells removed (deletion) or revealed (insertion)
    cosines: torch.Tensor  # (B, S + 1) image-text cosine at each step
    auc: torch.Tensor  # (B,) area under the curve


def deletion_auc(
    model: AlignModel,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    maps: torch.Tensor | str = "exact",
    *,
    steps: int = 16,
    baseline: float = 0.0,
    seed: int = 0,
) -> FaithfulnessCurve:
    """Cosine as the top-ranked cells are removed first. `maps`: (B, h, w) scores, a `similarity_map` method
    name, or "random" (a ranking drawn with `seed`, the reference a map must beat)."""
    return _curve(model, pixel_values, input_ids, attention_mask, token_type_ids, maps, steps, baseline, seed, False)


def insertion_auc(
    model: AlignModel,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    maps: torch.Tensor | str = "exact",
    *,
    steps: int = 16,
    baseline: float = 0.0,
    seed: int = 0,
) -> FaithfulnessCurve:
    """Cosine as the top-ranked cells are revealed first on a `baseline` image (see `deletion_auc`)."""
    return _curve(model, pixel_values, input_ids, attention_mask, token_type_ids, maps, steps, baseline, seed, True)


def masked_inputs(
    pixel_values: torch.Tensor, maps: torch.Tensor, count: int, insert: bool, baseline: float = 0.0
) -> torch.Tensor:
    """The (B, 3, H, W) images with the `count` top-ranked cells of each map removed (or, with `insert`, only
    those revealed on the baseline)."""
    B, _, H, W = pixel_values.shape
    h, w = maps.shape[-2:]
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)  # (B, hw): cells, best first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=order.device).expand(B, -1))  # (B, hw): each cell's rank
    cells = torch.arange(h * w, dtype=torch.float32, device=maps.device).view(1, 1, h, w)
    cell_of_pixel = F.interpolate(cells, size=(H, W), mode="nearest")[0, 0].long()  # (H, W)
    chosen = (rank[:, cell_of_pixel] < count)[:, None]  # (B, 1, H, W)
    base = torch.full_like(pixel_values, baseline)
    return torch.where(chosen, pixel_values, base) if insert else torch.where(chosen, base, pixel_values)


def _curve(
    model: AlignModel,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    maps: torch.Tensor | str,
    steps: int,
    baseline: float,
    seed: int,
    insert: bool,
) -> FaithfulnessCurve:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    check_images_and_texts(pixel_values, input_ids)
    if isinstance(maps, str):
        if maps == "random":
            with torch.no_grad():  # the last feature map's grid, as the maps have
                h, w = model.vision_model.forward_features(pixel_values[:1]).shape[-2:]
            g = torch.Generator().manual_seed(seed)
            maps = torch.rand(pixel_values.shape[0], h, w, generator=g)
        else:
            maps = similarity_map(model, pixel_values, input_ids, attention_mask, token_type_ids, method=maps)
    if maps.ndim != 3 or maps.shape[0] != pixel_values.shape[0]:
        raise ValueError(f"maps must be ({pixel_values.shape[0]}, h, w), one per image; got {tuple(maps.shape)}")
    cells = maps.shape[1] * maps.shape[2]
    steps = min(steps, cells)
    counts = [round(k * cells / steps) for k in range(steps + 1)]
    with eval_then_restore(model), torch.no_grad():
        text = model.encode_text(input_ids, attention_mask, token_type_ids, normalize=True)  # (1 or B, P)
        cosines = []
        for count in counts:
            images = masked_inputs(pixel_values, maps.to(pixel_values.device), count, insert, baseline)
            cosines.append((model.encode_image(images, normalize=True) * text).sum(dim=-1).float().cpu())
    curve = torch.stack(cosines, dim=1)  # (B, S + 1)
    fractions = torch.tensor(counts, dtype=torch.float32) / cells  # (S + 1,)
    return FaithfulnessCurve(fractions, curve, torch.trapezoid(curve, fractions, dim=1))
