"""Classification protocols on class-per-folder datasets: zero-shot top-1/top-5 with prompt templates, k-NN
top-1 against a train folder (Kakao Brain's ImageNet figure is k-NN, k=1), and a linear probe.

All embed with the eval processor (resize + centre crop) in eval mode and skip unreadable images, returning
them in `skipped`. With `distributed`, every rank of the process group must call the function; each embeds
its share of the images and all return the same result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.images import list_images
from ..defaults import IMAGE_BATCH, TEMPLATES
from ..model.align import AlignModel
from ..preprocess.processor import AlignProcessor
from .knn import KNN_KS, KNN_TEMPERATURE, knn_predict
from .linear_probe import DEFAULT_L2_GRID, LinearProbeResult, linear_probe
from .ranks import embed_images_sharded, embed_texts_sharded, percent


@dataclass
class ClassificationResult:
    """Zero-shot top-1 (and top-5 with at least 5 classes) in percent over the readable images."""

    top1: float
    num_images: int
    num_classes: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    top5: float | None = None

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        out = {f"{prefix}top1": self.top1, f"{prefix}num_images": self.num_images}
        return out if self.top5 is None else out | {f"{prefix}top5": self.top5}


@dataclass
class KnnResult:
    """k-NN top-1 in percent for each k, val images against the train gallery."""

    top1: dict[int, float]  # k -> top-1
    temperature: float
    num_train: int
    num_val: int
    num_classes: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class ClassFolder:
    """A class-per-folder dataset: `classes[labels[i]]` is the class of `paths[i]`."""

    classes: list[str]
    paths: list[Path]
    labels: list[int]


def read_class_folder(root: str | os.PathLike) -> ClassFolder:
    """Each sub-folder of `root` is a class (its name, underscores read as spaces); images found recursively."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} is not a folder of class sub-folders")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} has no class sub-folders (expected one sub-folder per class)")
    classes, paths, labels = [], [], []
    for label, folder in enumerate(folders):
        classes.append(folder.name.replace("_", " "))
        found = list_images(folder)
        paths.extend(found)
        labels.extend([label] * len(found))
    return ClassFolder(classes, paths, labels)


@dataclass
class EmbeddedFolder:
    """The readable images of a ClassFolder: (N, P) vectors and (N,) labels."""

    vectors: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    skipped: list[tuple[Path, str]]


def embed_class_folder(
    model: AlignModel,
    processor: AlignProcessor,
    root: str | os.PathLike,
    *,
    batch_size: int = IMAGE_BATCH,
    workers: int = 0,
    progress: bool = False,
    distributed: bool = False,
) -> EmbeddedFolder:
    """Embed every image of a class-per-folder dataset (the features of the k-NN and linear-probe protocols)."""
    data = read_class_folder(root)
    embedded = embed_images_sharded(
        model,
        processor.image_processor,
        data.paths,
        distributed=distributed,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
    )
    label_of = dict(zip(data.paths, data.labels, strict=True))
    labels = torch.tensor([label_of[p] for p in embedded.paths], dtype=torch.long)
    if not len(labels):
        raise ValueError(f"none of the {len(data.paths)} images under {root} could be read")
    return EmbeddedFolder(embedded.vectors, labels, data.classes, list(embedded.failures))


def zero_shot_accuracy(
    model: AlignModel,
    processor: AlignProcessor,
    root: str | os.PathLike,
    templates: str | Sequence[str] = TEMPLATES,
    *,
    class_names: Sequence[str] | None = None,
    batch_size: int = IMAGE_BATCH,
    workers: int = 0,
    progress: bool = False,
    distributed: bool = False,
) -> ClassificationResult:
    """Zero-shot top-1 (and top-5) on a class-per-folder dataset, with prompts built from the folder names, or
    from `class_names` (one per sub-folder, in sorted folder order: e.g. ImageNet's names for its synset folders)."""
    from .zero_shot import build_classifier, classify_embeddings

    data = embed_class_folder(
        model, processor, root, batch_size=batch_size, workers=workers, progress=progress, distributed=distributed
    )
    if class_names is not None and len(class_names) != len(data.classes):
        raise ValueError(f"{len(class_names)} class names for the {len(data.classes)} sub-folders of {root}")
    names = data.classes if class_names is None else list(class_names)

    def embed(prompts: list[str]) -> torch.Tensor:
        return embed_texts_sharded(model, processor.tokenizer, prompts, distributed=distributed, progress=progress)

    classifier = build_classifier(model, processor, names, templates, embed=embed)  # (C, P)
    logits = classify_embeddings(model, classifier, data.vectors).logits.float().cpu()  # (N, C)
    top5 = None
    if len(data.classes) >= 5:
        in_top5 = (logits.topk(5, dim=1).indices == data.labels[:, None]).any(dim=1)
        top5 = percent(in_top5)
    return ClassificationResult(
        top1=percent(logits.argmax(dim=1) == data.labels),
        num_images=len(data.labels),
        num_classes=len(data.classes),
        skipped=data.skipped,
        top5=top5,
    )


def train_val_features(
    model: AlignModel,
    processor: AlignProcessor,
    train_root: str | os.PathLike,
    val_root: str | os.PathLike,
    **kwargs: Any,
) -> tuple[EmbeddedFolder, EmbeddedFolder]:
    """Both folders embedded (kwargs as embed_class_folder), the val labels renumbered into the train
    folder's classes (matched by folder name)."""
    train = embed_class_folder(model, processor, train_root, **kwargs)
    val = embed_class_folder(model, processor, val_root, **kwargs)
    unknown = sorted(set(val.classes) - set(train.classes))
    if unknown:
        raise ValueError(f"val classes missing from the train folder {train_root}: {unknown}")
    val.labels = torch.tensor([train.classes.index(val.classes[i]) for i in val.labels.tolist()], dtype=torch.long)
    return train, val


def knn_scores(
    train: EmbeddedFolder, val: EmbeddedFolder, ks: Sequence[int] = KNN_KS, temperature: float = KNN_TEMPERATURE
) -> KnnResult:
    """k-NN top-1 of the val features against the train features as the gallery, for each k (evaluate.knn)."""
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {list(ks)}")
    top1 = {}
    for k in ks:
        predicted = knn_predict(train.vectors, train.labels, val.vectors, len(train.classes), k, temperature)
        top1[k] = percent(predicted == val.labels)
    return KnnResult(
        top1, temperature, len(train.labels), len(val.labels), len(train.classes), train.skipped + val.skipped
    )


def knn_accuracy(
    model: AlignModel,
    processor: AlignProcessor,
    train_root: str | os.PathLike,
    val_root: str | os.PathLike,
    ks: Sequence[int] = KNN_KS,
    *,
    temperature: float = KNN_TEMPERATURE,
    **embed: Any,
) -> KnnResult:
    """k-NN top-1 of a val folder against a train folder (Kakao Brain's protocol at k=1). `embed`: how the
    folders are embedded (batch_size, workers, progress, distributed: as embed_class_folder)."""
    train, val = train_val_features(model, processor, train_root, val_root, **embed)
    return knn_scores(train, val, ks, temperature)


def linear_probe_scores(
    train: EmbeddedFolder,
    val: EmbeddedFolder,
    *,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    solver: str = "auto",
    seed: int = 0,
) -> LinearProbeResult:
    """Linear-probe top-1 on the val features, the probe fitted on the train features (evaluate.linear_probe)."""
    result = linear_probe(
        train.vectors,
        train.labels,
        val.vectors,
        val.labels,
        len(train.classes),
        l2_grid=l2_grid,
        val_fraction=val_fraction,
        seed=seed,
        solver=solver,
    )
    result.skipped = train.skipped + val.skipped
    return result


def linear_probe_accuracy(
    model: AlignModel,
    processor: AlignProcessor,
    train_root: str | os.PathLike,
    val_root: str | os.PathLike,
    *,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    solver: str = "auto",
    seed: int = 0,
    **embed: Any,
) -> LinearProbeResult:
    """Linear-probe top-1 of a val folder, the probe fitted on a train folder's frozen features (`embed`: as
    knn_accuracy's)."""
    train, val = train_val_features(model, processor, train_root, val_root, **embed)
    return linear_probe_scores(train, val, l2_grid=l2_grid, val_fraction=val_fraction, solver=solver, seed=seed)
