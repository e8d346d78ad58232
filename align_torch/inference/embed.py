"""The one embedding mapper: a batch of pixels or token ids -> normalised float32 rows on the CPU, under one
precision policy, used by every writer (the embeddings file, the embeddings folder, evaluation, zero-shot),
so the same model on the same device gives the same vectors whichever writer asks.

Precision policy (`compute_mode`): a float32 model on a CUDA GPU runs under bfloat16 autocast (the towers'
convolutions and matmuls in bf16, as the embeddings folder has always been written); anywhere else the model
runs in its own dtype. The rows are L2-normalised after the cast to float32, so they are unit length in float32
whatever ran the forward.

`embed_images` / `embed_texts` map whole lists: images are read by DataLoader workers through
ImageFileDataset, so decoding overlaps the forward passes and a file that cannot be read is reported (by path)
and skipped rather than ending the run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.images import ImageFileDataset, ImageLoadError, collate_images
from ..data.pairs import image_name, load_pair_image
from ..data.samples import ImageRef
from ..defaults import IMAGE_BATCH, TEXT_BATCH
from ..model.align import AlignModel
from ..preprocess.image_processing import AlignImageProcessor
from ..preprocess.tokenizer import AlignTokenizer
from .backend import backend_of
from .stages import StageClock


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (no dropout, BatchNorm running statistics) and restore the previous mode after,
    so a model in the middle of fine-tuning can be evaluated without touching its BatchNorm statistics."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


AUTOCAST = "bf16-autocast"


def compute_mode(model: nn.Module) -> str:
    """How the mapper runs `model`: "bf16-autocast" for a float32 model on CUDA, else its weights' dtype
    ("float32", "bfloat16", "float16"), followed by the backend when a tower is not PyTorch ("float32, image
    onnxruntime, text torch"). The embeddings folder records it, so a resume cannot mix two of them."""
    device, dtype = _model_device_dtype(model)
    mode = AUTOCAST if device.type == "cuda" and dtype == torch.float32 else str(dtype).removeprefix("torch.")
    backend = backend_of(model)
    return mode if backend == "torch" else f"{mode}, {backend}"


def _precision(device: torch.device, compute: str) -> contextlib.AbstractContextManager:
    # No autocast object at all otherwise: not every device type has one, even disabled.
    if compute == AUTOCAST:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def encode_image_batch(model: AlignModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """(b, 3, H, W) pixels -> (b, projection_dim) float32 unit rows on the CPU, under the precision policy."""
    device, dtype = _model_device_dtype(model)
    pixels = pixel_values.to(device=device, dtype=dtype, non_blocking=True)
    with _precision(device, compute_mode(model)):
        rows = model.encode_image(pixels)  # (b, P)
    return F.normalize(rows.float(), dim=-1).cpu()


@torch.no_grad()
def encode_text_batch(model: AlignModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tokenizer output (input_ids, attention_mask, token_type_ids: (b, T)) -> (b, projection_dim) float32 unit
    rows on the CPU, under the precision policy."""
    device, _ = _model_device_dtype(model)
    batch = {k: v.to(device) for k, v in batch.items()}
    with _precision(device, compute_mode(model)):
        rows = model.encode_text(**batch)  # (b, P)
    return F.normalize(rows.float(), dim=-1).cpu()


@torch.no_grad()
def embed_texts(
    model: AlignModel,
    tokenizer: AlignTokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = TEXT_BATCH,
    progress: bool = False,
) -> torch.Tensor:
    """Texts -> (N, projection_dim) float32 L2-normalised embeddings on the CPU.

    Each batch is padded to its longest text (not to 64): the mask makes the padding irrelevant to the
    result, and short prompts run several times faster.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    if len(texts) == 0:
        raise ValueError("no texts to embed")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chunks = []
    with eval_mode(model), tqdm(total=len(texts), unit="text", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt"
            )
            chunks.append(encode_text_batch(model, batch))  # (b, P)
            bar.update(len(batch["input_ids"]))
    return torch.cat(chunks)


@dataclass
class ImageEmbeddings:
    """What embed_images returns: one row per readable image, and the files that could not be used."""

    vectors: torch.Tensor  # (N_good, projection_dim) float32, L2-normalised, on the CPU
    paths: list[Path]  # the N_good embedded files, in input order
    failures: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason), in input order
    stages: StageClock = field(default_factory=StageClock)  # seconds per stage (inference.stages)


LOADER_NICENESS = 10


def _yield_to_model(_worker: int) -> None:
    # On the CPU the loading workers and the model's threads share the cores; decoding is a tenth of the model's
    # time at align-base, so under contention the model should win: a worker lowered by 10 gets about a tenth
    # of a contended core, and every idle one (the model waiting for images) in full.
    with contextlib.suppress(OSError, AttributeError):
        os.nice(LOADER_NICENESS)


def loader_options(device: torch.device, workers: int) -> dict[str, Any]:
    """DataLoader options of the embedding jobs: pinned memory for CUDA; on the CPU, workers that yield to the
    model's threads (lower priority)."""
    options: dict[str, Any] = {"pin_memory": device.type == "cuda"}
    if device.type == "cpu" and workers > 0:
        options["worker_init_fn"] = _yield_to_model
    return options


def image_reader(image_processor: AlignImageProcessor, draft_decode: bool = False) -> Callable[..., Any]:
    """How the embedding jobs read an image reference: load_pair_image, with `draft_decode` a JPEG decoded at the
    smallest 1/1, 1/2, 1/4 or 1/8 scale that still covers the processor's resize (PIL's draft mode)."""
    if not draft_decode:
        return load_pair_image
    size = image_processor.size if image_processor.do_resize else image_processor.crop_size  # (H, W)
    return functools.partial(load_pair_image, draft=(size[1], size[0]))


@torch.no_grad()
def embed_images(
    model: AlignModel,
    image_processor: AlignImageProcessor,
    paths: Sequence[str | os.PathLike | ImageRef],
    *,
    batch_size: int = IMAGE_BATCH,
    workers: int = 0,
    strict: bool = False,
    on_failure: Callable[[Path, str], None] | None = None,
    progress: bool = False,
    draft_decode: bool = False,
) -> ImageEmbeddings:
    """Embed image files in batches, loading them in `workers` DataLoader processes (0: in this process).

    A file that cannot be read (missing, empty, truncated, not an image) is passed to `on_failure(path,
    reason)` as soon as it is found and left out of the result; with `strict=True` the first such file
    raises ImageLoadError instead. Images are loaded with their EXIF orientation applied (load_image);
    `draft_decode`: see image_reader. The result's `stages` says where the time went.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    dataset = ImageFileDataset(paths, image_processor.steps(), load=image_reader(image_processor, draft_decode))
    device, _ = _model_device_dtype(model)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_images,
        **loader_options(device, workers),
    )
    chunks: list[torch.Tensor] = []
    good: list[Path] = []
    failures: list[tuple[Path, str]] = []
    clock = StageClock()
    with eval_mode(model), tqdm(total=len(dataset), unit="img", file=sys.stderr, disable=not progress) as bar:
        for batch in clock.timed_batches(loader):
            for index, reason in batch.failures:
                path = dataset.paths[index]
                if strict:
                    raise ImageLoadError(image_name(path), reason)
                failures.append((path, reason))
                if on_failure is not None:
                    on_failure(path, reason)
            if batch.pixel_values is not None:
                with clock.time("model"):
                    chunks.append(encode_image_batch(model, batch.pixel_values))  # (b, P)
                good.extend(dataset.paths[i] for i in batch.indices)
            bar.update(len(batch.indices) + len(batch.failures))
    dim = model.config.projection_dim
    vectors = torch.cat(chunks) if chunks else torch.empty(0, dim)
    return ImageEmbeddings(vectors=vectors, paths=good, failures=failures, stages=clock)
