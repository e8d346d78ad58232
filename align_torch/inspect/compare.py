"""What differs between two models, layer by layer: pooled features at every site of each tower, and the CKA
between every site of one model and every site of the other.

Image sites: the stem, the last block of each stage, the pooled embedding (`vision_model`) and the image
projection where there is one; each (B, C, h, w) map is averaged over space. Text sites: the embeddings, every
layer and the projected embedding; each (B, T, D) state is averaged over the real tokens, except the last
layer's, the tower's own output, which is pooled as the model pools its text ([CLS] for ALIGN, or the mean). At
the embeddings and the inner layers [CLS] would be the same vector for every text (position 0's token). Only
the pooled (N, C) features are kept, so memory grows with the number of inputs times the widths, never with the
maps. A site whose features do not vary over the inputs (cka.varies) has no CKA: `cka_matrix` leaves it out and
names it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.images import ImageFileDataset, collate_images
from .cka import cka, varies
from .hooks import capture


def image_sites(model: nn.Module) -> list[str]:
    """The image tower's sites compared: stem, each stage's output, the pooled (and projected) embedding."""
    vision = model.vision_model
    sites = ["vision_model.stem", *(f"vision_model.blocks.{end}" for end in vision.stage_ends), "vision_model"]
    return sites + (["image_projection"] if model.image_projection is not None else [])


def text_sites(model: nn.Module) -> list[str]:
    """The text tower's sites compared: the embeddings, every layer, the projected embedding."""
    return ["text_model.embeddings", *(f"text_model.layers.{i}" for i in range(len(model.text_model.layers)))] + [
        "text_projection"
    ]


def _pool(
    value: torch.Tensor, model: nn.Module, attention_mask: torch.Tensor | None, own_output: bool = False
) -> torch.Tensor:
    if value.ndim == 4:
        return value.float().mean(dim=(2, 3))  # (B, C)
    if value.ndim == 3 and own_output:
        return model.pool_text(value, attention_mask).float()  # (B, D): as the tower pools its output
    if value.ndim == 3:
        return mean_over_tokens(value, attention_mask).float()  # (B, D)
    return value.float()  # (B, C): already an embedding


def mean_over_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, D) states -> (B, D): the mean over the tokens the mask keeps (every token without a mask)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    keep = attention_mask[:, : hidden.shape[1], None].to(hidden.dtype)  # (B, T, 1)
    return (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


def image_site_features(
    model: nn.Module, batches: Iterable[torch.Tensor | tuple[list[int], torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """(B, 3, H, W) pixel batches (or `image_batches`' pairs) -> site -> (N, C) pooled features (float32, CPU)."""
    sites = image_sites(model)
    device, dtype = _device_dtype(model)
    chunks: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    with torch.no_grad(), _eval(model):
        for pixels in batches:
            pixels = pixels[1] if isinstance(pixels, tuple) else pixels  # (indices, pixels) from image_batches
            with capture(model, sites) as cache:
                model.encode_image(pixels.to(device=device, dtype=dtype))
            for s in sites:
                chunks[s].append(_pool(cache[s], model, None).cpu())
    return _stack(chunks, "images")


def text_site_features(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Tokenised text batches (input_ids, attention_mask, token_type_ids) -> site -> (N, D) pooled features.
    Needs an unfused model: the fused packed text path calls no layer modules."""
    sites = text_sites(model)
    last = f"text_model.layers.{len(model.text_model.layers) - 1}"  # the tower's own output
    device, _ = _device_dtype(model)
    chunks: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    with torch.no_grad(), _eval(model):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items() if v is not None}
            with capture(model, sites) as cache:
                model.encode_text(**batch)
            for s in sites:
                chunks[s].append(_pool(cache[s], model, batch.get("attention_mask"), own_output=s == last).cpu())
    return _stack(chunks, "texts")


def _stack(chunks: dict[str, list[torch.Tensor]], what: str) -> dict[str, torch.Tensor]:
    if not any(chunks.values()):
        raise ValueError(f"no {what} to compare")
    return {s: torch.cat(c) for s, c in chunks.items()}


@dataclass
class CkaMatrix:
    """CKA between every site of model A (rows) and every site of model B (columns), for one tower."""

    sites_a: list[str]
    sites_b: list[str]
    values: list[list[float]]  # len(sites_a) x len(sites_b)
    num_inputs: int
    constant_a: list[str] = field(default_factory=list)  # sites left out: constant over the inputs
    constant_b: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "sites_a": self.sites_a,
            "sites_b": self.sites_b,
            "cka": self.values,
            "num_inputs": self.num_inputs,
            "constant_sites_a": self.constant_a,
            "constant_sites_b": self.constant_b,
        }

    def diagonal(self) -> dict[str, float]:
        """CKA of each site kept in both models against itself (same name), in A's order."""
        return {s: self.values[i][self.sites_b.index(s)] for i, s in enumerate(self.sites_a) if s in self.sites_b}


def cka_matrix(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], debiased: bool = True) -> CkaMatrix:
    """Site features of two models over the same inputs -> their CKA matrix over the sites that vary
    (cka.varies); the constant ones are listed in `constant_a` / `constant_b`."""
    counts = {len(v) for v in (*a.values(), *b.values())}
    if len(counts) != 1:
        raise ValueError(f"the two models' features cover different numbers of inputs: {sorted(counts)}")
    kept_a, kept_b = ({s: x for s, x in f.items() if varies(x)} for f in (a, b))
    if not kept_a or not kept_b:
        raise ValueError("CKA is undefined: no site of one of the models varies over the inputs")
    values = [[cka(x, y, debiased) for y in kept_b.values()] for x in kept_a.values()]
    constant_a, constant_b = ([s for s in f if s not in kept] for f, kept in ((a, kept_a), (b, kept_b)))
    return CkaMatrix(list(kept_a), list(kept_b), values, counts.pop(), constant_a, constant_b)


def image_batches(
    paths: Sequence[Path],
    preprocess: Callable[[Image.Image], np.ndarray],
    batch_size: int,
    on_failure: Callable[[Path, str], None] | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices into `paths`, pixel batch) of the readable images (each unreadable one passed to `on_failure`)."""
    dataset = ImageFileDataset(paths, preprocess)
    for start in range(0, len(dataset), batch_size):
        batch = collate_images([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        for index, reason in batch.failures:
            if on_failure is not None:
                on_failure(dataset.paths[index], reason)
        if batch.pixel_values is not None:
            yield batch.indices, batch.pixel_values


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


class _eval:
    """Eval mode inside the block; every module's mode restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.modes = {m: m.training for m in self.model.modules()}
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, training in self.modes.items():
            m.train(training)
