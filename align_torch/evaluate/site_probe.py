"""A linear probe at every image site: how linearly decodable the classes are after the stem, each stage and the
pooled embedding (features pooled over space, `align_torch.inspect.compare`), by the CLIP protocol of
`linear_probe` (L2 strength chosen on held-out train features)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..defaults import IMAGE_BATCH
from ..inspect.cka import varies
from ..inspect.compare import image_batches, image_site_features
from .classification import read_class_folder
from .linear_probe import linear_probe


@dataclass
class SiteProbe:
    site: str
    top1: float  # percent, on the val folder
    l2: float  # the strength the sweep chose
    dims: int


def probe_sites(
    model: nn.Module,
    preprocess: Callable,
    train_root: str | os.PathLike,
    val_root: str | os.PathLike,
    *,
    batch_size: int = IMAGE_BATCH,
    solver: str = "auto",
    seed: int = 0,
    on_failure: Callable[[Path, str], None] | None = None,
    on_constant: Callable[[str], None] | None = None,
    progress: bool = False,
) -> list[SiteProbe]:
    """Class-per-folder train and val images -> one probe result per image site, first site first. A site whose
    train features do not vary over the images (inspect.cka.varies) has nothing to probe: it is passed to
    `on_constant` and left out. `progress`: bars on stderr for each set's image batches and for the probes fitted."""
    train, val = read_class_folder(train_root), read_class_folder(val_root)
    if train.classes != val.classes:
        raise ValueError(f"{val_root}: its class folders {val.classes} differ from {train_root}'s {train.classes}")
    sets = []
    for name, data in (("train", train), ("val", val)):
        kept: list[int] = []

        def batches(data=data, kept=kept, name=name):  # record which images were readable, to keep their labels
            read = image_batches(data.paths, preprocess, batch_size, on_failure)
            total = -(-len(data.paths) // batch_size)
            for indices, pixels in tqdm(read, f"probe: {name} images", total, disable=not progress, unit="batch"):
                kept.extend(indices)
                yield pixels

        features = image_site_features(model, batches())
        sets.append((features, torch.tensor([data.labels[i] for i in kept], dtype=torch.long)))
    (train_features, train_labels), (val_features, val_labels) = sets
    results = []
    for site, x in tqdm(train_features.items(), "probe: fitting", disable=not progress, unit="site"):
        if not varies(x):
            if on_constant is not None:
                on_constant(site)
            continue
        r = linear_probe(x, train_labels, val_features[site], val_labels, len(train.classes), seed=seed, solver=solver)
        results.append(SiteProbe(site, r.top1, r.l2, x.shape[1]))
    return results
