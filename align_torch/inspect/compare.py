"""What differs between two models, layer by layer: pooled features at every site of each tower, and the CKA
between every site of one model and every site of the other.

Image sites: the stem, the last block of each stage, the pooled embedding (`vision_model`) and the image
projection where there is one; each (B, C, h, w) map is averaged over space. Text sites: the embeddings, every
layer and the projected embedding; each (B, T, D) state is pooled as the model pools its text ([CLS], or the
mean over real tokens). Only the pooled (N, C) features are kept, so memory grows with the number of inputs
times the widths, never with the maps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.images import ImageFileDataset, collate_images
from .cka import cka
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


def _pool(value: torch.Tensor, model: nn.Module, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if value.ndim == 4:
        return value.float().mean(dim=(2, 3))  # (B, C)
    if value.ndim == 3:
        return model.pool_text(value, attention_mask).float()  # (B, D)
    return value.float()  # (B, C): already an embedding


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
    device, _ = _device_dtype(model)
    chunks: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    with torch.no_grad(), _eval(model):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items() if v is not None}
            with capture(model, sites) as cache:
                model.encode_text(**batch)
            for s in sites:
                chunks[s].append(_pool(cache[s], model, batch.get("attention_mask")).cpu())
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

    def to_dict(self) -> dict[str, object]:
        return {"sites_a": self.sites_a, "sites_b": self.sites_b, "cka": self.values, "num_inputs": self.num_inputs}


def cka_matrix(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], debiased: bool = True) -> CkaMatrix:
    """Site features of two models over the same inputs -> their CKA matrix."""
    counts = {len(v) for v in (*a.values(), *b.values())}
    if len(counts) != 1:
        raise ValueError(f"the two models' features cover different numbers of inputs: {sorted(counts)}")
    values = [[cka(x, y, debiased) for y in b.values()] for x in a.values()]
    return CkaMatrix(list(a), list(b), values, counts.pop())


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
