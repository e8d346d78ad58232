"""Image-text retrieval recall@K, the protocol of the CLIP and ALIGN papers: on the Karpathy test splits
(Flickr30K 1,000 images, MSCOCO 5,000 images, 5 captions each) image->text counts an image as found when
any of its captions is among the top K texts (denominator: images), and text->image counts each caption
on its own (denominator: captions).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.samples import ImageRef
from ..defaults import IMAGE_BATCH
from ..model.align import AlignModel
from ..preprocess.processor import AlignProcessor
from .ranks import embed_images_sharded, embed_texts_sharded, percent

KARPATHY_SPLITS = ("test", "val", "train", "restval")


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


def recall_at_k(
    sims: torch.Tensor, owner: torch.Tensor, ks: Sequence[int]
) -> tuple[dict[int, float], dict[int, float]]:
    """(image->text, text->image) recall@K in percent from (T, I) caption-image similarities and the (T,)
    image index of each caption. Every image must own at least one caption."""
    num_texts, num_images = sims.shape
    is_true = owner[:, None] == torch.arange(num_images)[None, :]  # (T, I)
    # Ranks count every wrong candidate scoring at least as high as the right one: ties count against
    # the model, so a collapsed model (all embeddings equal) scores chance, not 100%.
    true_sim = sims.gather(1, owner[:, None])  # (T, 1)
    t2i_rank = ((sims >= true_sim) & ~is_true).sum(1)  # (T,)
    best_true = sims.masked_fill(~is_true, float("-inf")).amax(0)  # (I,) best caption of each image
    i2t_rank = ((sims >= best_true[None, :]) & ~is_true).sum(0)  # (I,)
    i2t = {k: percent(i2t_rank < k) for k in ks}
    t2i = {k: percent(t2i_rank < k) for k in ks}
    return i2t, t2i


def retrieval_recall(
    model: AlignModel,
    processor: AlignProcessor,
    pairs: Sequence[tuple[str | os.PathLike | ImageRef, str]],
    ks: Sequence[int] = (1, 5, 10),
    *,
    batch_size: int = IMAGE_BATCH,
    workers: int = 0,
    progress: bool = False,
    distributed: bool = False,
) -> RetrievalResult:
    """Recall@K for (image, caption) pairs (an image: a path, or a tar, Parquet or rows image from
    `data.read_pairs`). An image listed on several rows is one image with several
    captions (the COCO/Flickr30k protocol): image->text counts a hit when any of its captions is in the top K.
    Captions of an unreadable image are left out. With `distributed`, every rank of the process group must
    call it; each embeds its share and all return the same result."""
    if any(k < 1 for k in ks):
        raise ValueError(f"every K of recall@K must be at least 1, got {list(ks)}")
    captions_of: dict[Path | ImageRef, list[str]] = {}
    for image, caption in pairs:
        captions_of.setdefault(Path(image) if isinstance(image, (str, os.PathLike)) else image, []).append(caption)
    if not captions_of:
        raise ValueError("no image-caption pairs to evaluate")
    images = embed_images_sharded(
        model,
        processor.image_processor,
        list(captions_of),
        distributed=distributed,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
    )
    if not images.paths:
        raise ValueError(f"none of the {len(captions_of)} images could be read, e.g. {images.failures[0]}")
    texts, owner = [], []
    for i, path in enumerate(images.paths):
        texts.extend(captions_of[path])
        owner.extend([i] * len(captions_of[path]))
    text_vectors = embed_texts_sharded(
        model, processor.tokenizer, texts, distributed=distributed, batch_size=batch_size, progress=progress
    )  # (T, P)
    sims = text_vectors @ images.vectors.t()  # (T, I)
    i2t, t2i = recall_at_k(sims, torch.tensor(owner), ks)
    return RetrievalResult(i2t, t2i, len(images.paths), len(texts), list(images.failures))


def _karpathy_entry(path: Path, i: int, entry: object) -> tuple[str, str | None, list[dict]]:
    """(filename, filepath, sentences) of `images[i]`, each checked for its kind; ValueError naming the file and field."""
    where = f"{path}: images[{i}]"
    if not isinstance(entry, dict) or "filename" not in entry or "sentences" not in entry:
        raise ValueError(f"{where} has no 'filename' or 'sentences'")
    if not isinstance(entry["filename"], str) or not entry["filename"]:
        raise ValueError(f"{where}.filename must be a file name, got {entry['filename']!r}")
    filepath = entry.get("filepath")
    if filepath is not None and not isinstance(filepath, str):
        raise ValueError(f"{where}.filepath must be a folder name, got {filepath!r}")
    sentences = entry["sentences"]
    if not isinstance(sentences, list):
        raise ValueError(f"{where}.sentences must be a list of {{'raw': caption}}, got {type(sentences).__name__}")
    for j, sentence in enumerate(sentences):
        if not isinstance(sentence, dict) or not isinstance(sentence.get("raw", ""), str):
            raise ValueError(f"{where}.sentences[{j}] must be an object with a text 'raw', got {sentence!r}"[:300])
    return entry["filename"], filepath, sentences


def read_karpathy(
    path: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str = "test",
    captions_per_image: int | None = 5,
) -> list[tuple[Path, str]]:
    """(image path, caption) pairs of one split of a Karpathy JSON (`dataset_coco.json`,
    `dataset_flickr30k.json`): `images[]` with `filename`, optional `filepath` (COCO's `val2014`), `split`
    and `sentences[].raw`. Images live under `image_root[/filepath]/filename`. `captions_per_image` keeps the
    first N captions of each image (5: the 25,000 captions of the published MSCOCO 5K figures; a few COCO
    images have 6 or 7); None keeps them all."""
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"split must be one of {KARPATHY_SPLITS}, got {split!r}")
    if captions_per_image is not None and captions_per_image < 1:
        raise ValueError(f"captions_per_image must be at least 1 or None, got {captions_per_image}")
    path, root = Path(path), Path(image_root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 JSON (byte offset {e.start}: {e.reason})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path} is not a Karpathy-split file: expected a JSON object with an 'images' list")
    pairs = []
    for i, entry in enumerate(data["images"]):
        filename, filepath, sentences = _karpathy_entry(path, i, entry)
        if entry.get("split") != split:
            continue
        folder = root / filepath if filepath else root
        captions = [s.get("raw", "").strip() for s in sentences if s.get("raw", "").strip()]
        pairs.extend((folder / filename, c) for c in captions[:captions_per_image])
    if not pairs:
        raise ValueError(f"{path} has no images with split {split!r} and a caption")
    return pairs
