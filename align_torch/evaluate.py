"""Evaluations to cite: image-text retrieval recall@K on a caption manifest, zero-shot top-1 on a
class-per-folder dataset, and k-NN top-1 from a train folder (Kakao Brain's ImageNet figure is k-NN, k=1).

All three embed with the eval processor (resize + centre crop) in eval mode and skip unreadable images,
returning them in `skipped`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data.images import list_images
from .embeddings import embed_images, embed_texts
from .model import AlignModel
from .processor import AlignProcessor


@dataclass
class RetrievalResult:
    """Recall@K in percent, both directions."""

    image_to_text: dict[int, float]  # K -> % of images with one of their captions in the top K texts
    text_to_image: dict[int, float]  # K -> % of captions whose image is in the top K images
    num_images: int
    num_texts: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {f"{prefix}i2t_r{k}": v for k, v in self.image_to_text.items()}
        out |= {f"{prefix}t2i_r{k}": v for k, v in self.text_to_image.items()}
        return out | {f"{prefix}num_images": self.num_images, f"{prefix}num_texts": self.num_texts}


@dataclass
class ClassificationResult:
    """Top-1 accuracy in percent over the readable images."""

    top1: float
    num_images: int
    num_classes: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        return {f"{prefix}top1": self.top1, f"{prefix}num_images": self.num_images}


def retrieval_recall(
    model: AlignModel,
    processor: AlignProcessor,
    pairs: Sequence[tuple[str | os.PathLike, str]],
    ks: Sequence[int] = (1, 5, 10),
    *,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
) -> RetrievalResult:
    """Recall@K for (image path, caption) pairs. An image listed on several rows is one image with several
    captions (the COCO/Flickr30k protocol): image->text counts a hit when any of its captions is in the top K.
    Captions of an unreadable image are left out."""
    captions_of: dict[Path, list[str]] = {}
    for image, caption in pairs:
        captions_of.setdefault(Path(image), []).append(caption)
    if not captions_of:
        raise ValueError("no image-caption pairs to evaluate")
    images = embed_images(
        model, processor.image_processor, list(captions_of), batch_size=batch_size, workers=workers, progress=progress
    )
    if not images.paths:
        raise ValueError(f"none of the {len(captions_of)} images could be read, e.g. {images.failures[0]}")
    texts, owner = [], []
    for i, path in enumerate(images.paths):
        texts.extend(captions_of[path])
        owner.extend([i] * len(captions_of[path]))
    text_vectors = embed_texts(model, processor.tokenizer, texts, batch_size=batch_size)  # (T, P)
    sims = text_vectors @ images.vectors.t()  # (T, I)
    owner_t = torch.tensor(owner)  # (T,) image index of each caption
    is_true = owner_t[:, None] == torch.arange(len(images.paths))[None, :]  # (T, I)
    # Ranks count every wrong candidate scoring at least as high as the right one: ties count against
    # the model, so a collapsed model (all embeddings equal) scores chance, not 100%.
    true_sim = sims.gather(1, owner_t[:, None])  # (T, 1)
    t2i_rank = ((sims >= true_sim) & ~is_true).sum(1)  # (T,)
    best_true = sims.masked_fill(~is_true, float("-inf")).amax(0)  # (I,) best caption of each image
    i2t_rank = ((sims >= best_true[None, :]) & ~is_true).sum(0)  # (I,)
    return RetrievalResult(
        image_to_text={k: 100.0 * float((i2t_rank < k).float().mean()) for k in ks},
        text_to_image={k: 100.0 * float((t2i_rank < k).float().mean()) for k in ks},
        num_images=len(images.paths),
        num_texts=len(texts),
        skipped=list(images.failures),
    )


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


def _embed_class_folder(model, processor, data: ClassFolder, batch_size: int, workers: int, progress: bool):
    embedded = embed_images(
        model, processor.image_processor, data.paths, batch_size=batch_size, workers=workers, progress=progress
    )
    label_of = dict(zip(data.paths, data.labels, strict=True))
    labels = torch.tensor([label_of[p] for p in embedded.paths], dtype=torch.long)
    if not len(labels):
        raise ValueError(f"none of the {len(data.paths)} images could be read")
    return embedded, labels


def zero_shot_accuracy(
    model: AlignModel,
    processor: AlignProcessor,
    root: str | os.PathLike,
    templates: str | Sequence[str] = "simple",
    *,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
) -> ClassificationResult:
    """Zero-shot top-1 on a class-per-folder dataset, with prompts built from the folder names."""
    from .zero_shot import build_classifier, classify_embeddings

    data = read_class_folder(root)
    classifier = build_classifier(model, processor, data.classes, templates)  # (C, P)
    embedded, labels = _embed_class_folder(model, processor, data, batch_size, workers, progress)
    predicted = classify_embeddings(model, classifier, embedded.vectors).top1.cpu()  # (N,)
    return ClassificationResult(
        top1=100.0 * float((predicted == labels).float().mean()),
        num_images=len(labels),
        num_classes=len(data.classes),
        skipped=list(embedded.failures),
    )


def knn_accuracy(
    model: AlignModel,
    processor: AlignProcessor,
    train_root: str | os.PathLike,
    val_root: str | os.PathLike,
    k: int = 1,
    *,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
) -> ClassificationResult:
    """k-NN top-1: each val image takes the class with the largest summed cosine similarity among its k
    nearest train images (k=1: the class of the nearest one). Classes are matched by folder name."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    train, val = read_class_folder(train_root), read_class_folder(val_root)
    unknown = sorted(set(val.classes) - set(train.classes))
    if unknown:
        raise ValueError(f"val classes missing from the train folder {train_root}: {unknown}")
    train_emb, train_labels = _embed_class_folder(model, processor, train, batch_size, workers, progress)
    val_emb, val_labels = _embed_class_folder(model, processor, val, batch_size, workers, progress)
    val_labels = torch.tensor([train.classes.index(val.classes[i]) for i in val_labels.tolist()])
    sims = val_emb.vectors @ train_emb.vectors.t()  # (N_val, N_train)
    top = sims.topk(min(k, sims.shape[1]), dim=1)  # (N_val, k)
    votes = torch.zeros(len(val_labels), len(train.classes))  # (N_val, C)
    votes.scatter_add_(1, train_labels[top.indices], top.values)
    predicted = votes.argmax(dim=1)
    return ClassificationResult(
        top1=100.0 * float((predicted == val_labels).float().mean()),
        num_images=len(val_labels),
        num_classes=len(train.classes),
        skipped=list(train_emb.failures) + list(val_emb.failures),
    )
