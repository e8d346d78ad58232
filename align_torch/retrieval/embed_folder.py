"""Embedding a collection into the embeddings folder (layout.py), partition by partition, resumable, with
torchrun ranks sharing the partitions.

Each rank embeds its unfinished partitions (partitions.rank_partitions) with one DataLoader whose workers
decode and resize; a batch never spans two partitions, so a partition's rows (and their float rounding)
are the same whichever rank embeds it and however many ranks there are.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from .. import __name__ as _package
from .. import defaults
from ..checkpoint.hub import ModelSource, resolve_model
from ..data import ImageRef, Pair, load_pair_image
from ..data.images import ImageBatch, ImageItem, collate_images, read_item
from ..data.pairs import image_name
from ..data.parquet import row_group_sizes
from ..defaults import IMAGE_BATCH, PARTITION_SIZE, TEXT_BATCH
from ..inference.embed import compute_mode, embed_texts, encode_image_batch, eval_mode, image_reader, loader_options
from ..inference.stages import StageClock
from ..model.align import AlignModel
from ..preprocess.image_processing import AlignImageProcessor
from ..preprocess.tokenizer import AlignTokenizer
from ..util.class_record import class_record
from ..util.distributed import rank_device, torchrun_env
from ..util.fileio import path_to_text
from ..util.renamed import renamed_keywords
from .layout import DTYPES, INFO_FILE, FolderInfo, finished_partitions
from .partitions import InputPlan, rank_partitions
from .writer import PartitionResult, prepare_folder, write_partition


def model_fingerprint(name_or_path: str | os.PathLike | ModelSource) -> str:
    """sha256 over the model folder's weight and config files, every byte of each (with names and sizes): weights
    retrained or edited in place, anywhere in the file, are noticed. Hashing streams the file (about 0.8 s for
    align-base's 690 MB on one core), small beside loading the model."""
    folder = resolve_model(name_or_path).folder
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
    for path in files:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h.update(f"{path.name}\0{size}\n".encode())
            h.update(hashlib.file_digest(f, "sha256").digest())
    return "sha256:" + h.hexdigest()


def folder_info(
    plan: InputPlan, source: str | ModelSource, model: AlignModel, dtype: str, fuse: bool, compute: str
) -> FolderInfo:
    """The FolderInfo a run with these inputs, model (`model` loaded from the reference `source`) and options
    writes (and must find)."""
    import importlib.metadata

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    source = resolve_model(source)
    try:
        version = importlib.metadata.version("align-torch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return FolderInfo(
        model=source.reference,
        model_fingerprint=model_fingerprint(source),
        fused=fuse,
        compute=compute,
        dim=model.config.projection_dim,
        dtype=dtype,
        captions=plan.captions,
        input_kind=plan.kind,
        inputs=plan.inputs,
        input_items=plan.items,
        input_fingerprint=plan.fingerprint(),
        partition_unit={"shards": "shard", "parquet": "row groups"}.get(plan.kind, "images"),
        partition_size=plan.partition_size,
        partitions=plan.partitions,
        model_class=class_record(type(model)),
        created_with={"package": _package, "version": version, "torch": torch.__version__},
    )


class _PairImages(Dataset):
    """Key (row, image) -> ImageItem(row, pixels) or ImageItem(row, None, reason); stateless, so the keys
    carry everything a worker needs."""

    def __init__(self, transform: Callable | Sequence[tuple[str, Callable]], load: Callable = load_pair_image) -> None:
        self.transform = transform
        self.load = load

    def __len__(self) -> int:
        raise TypeError("indexed by (row, image) keys from _PartitionBatches")

    def __getitem__(self, key: tuple[int, ImageRef]) -> ImageItem:
        row, image = key
        return read_item(row, image, self.load, self.transform)


class _PartitionBatches(Sampler):
    """Batches of (row, image) keys, partition after partition, never crossing a partition boundary; an empty
    partition yields one empty batch so the consumer still sees it."""

    def __init__(self, partitions: list[int], pairs: Callable[[int], list[Pair]], batch_size: int) -> None:
        self.partitions, self.pairs, self.batch_size = partitions, pairs, batch_size

    def __iter__(self) -> Iterator[list[tuple[int, ImageRef]]]:
        for p in self.partitions:
            pairs = self.pairs(p)
            for start in range(0, max(len(pairs), 1), self.batch_size):
                yield [(row, pairs[row].image) for row in range(start, min(start + self.batch_size, len(pairs)))]


def batches_in(rows: int, batch_size: int) -> int:
    return max(1, math.ceil(rows / batch_size))


@dataclass
class EmbedSummary:
    """What one process did: its partitions, those it found finished, rows written, images skipped."""

    partitions: int  # in the whole folder
    mine: list[int]  # this rank's partitions
    already_done: list[int]  # of mine, finished before this run
    embedded: list[int] = field(default_factory=list)  # of mine, written by this run
    rows: int = 0
    skipped: int = 0
    seconds: float = 0.0
    stages: StageClock = field(default_factory=StageClock)  # seconds per stage (inference.stages)


@torch.no_grad()
@renamed_keywords(model_name="source", fused="fuse")
def embed_to_folder(
    model: AlignModel,
    image_processor: AlignImageProcessor,
    tokenizer: AlignTokenizer,
    plan: InputPlan,
    out: str | Path,
    *,
    source: str | ModelSource,
    dtype: str = "float16",
    fuse: bool = True,
    batch_size: int = IMAGE_BATCH,
    text_batch_size: int = TEXT_BATCH,
    workers: int = 0,
    rank: int = 0,
    world: int = 1,
    progress: bool = False,
    bar_position: int | None = None,
    on_failure: Callable[[str, str], None] | None = None,
    draft_decode: bool = False,
) -> EmbedSummary:
    """Embed `plan`'s unfinished partitions that belong to `rank` into the folder `out` (created, or checked to
    have been made with the same model and arguments). `model` is the loaded model; `source` the folder or Hub
    repo id it was loaded from and `fuse` whether it went through fuse_for_inference (both recorded in the
    folder). Rows are L2-normalised and stored as `dtype`.

    The steps: describe the run (folder_info) and prepare the folder; find this rank's unfinished partitions;
    then for each, embed its images and captions (_embed_partition) and write it (write_partition).
    `draft_decode` (inference.embed.image_reader) is recorded with the compute mode: a rerun cannot mix them."""
    _check_sizes(batch_size, text_batch_size, workers)
    compute = compute_mode(model) + (", draft JPEG decode" if draft_decode else "")
    info = folder_info(plan, source, model, dtype, fuse, compute)
    prepare_folder(out, info)
    summary, todo = _unfinished_partitions(out, info, rank, world)
    if not todo:
        return summary
    pairs = _PartitionPairs(plan)
    loader = _image_loader(image_processor, draft_decode, todo, pairs, batch_size, workers, model)
    batches = summary.stages.timed_batches(loader)
    bar = tqdm(
        total=_images_in(plan, todo),
        unit="img",
        file=sys.stderr,
        disable=not progress,
        position=rank if bar_position is None else bar_position,
        desc=f"rank {rank}",
    )
    start = time.perf_counter()
    with eval_mode(model), bar:
        for p in todo:
            n = batches_in(len(pairs(p)), batch_size)
            step = _PartitionStep(p, pairs(p), pairs.damaged.get(p, []), batches, n, bar, on_failure, summary.stages)
            result = _embed_partition(model, tokenizer, plan.kind, info, step, text_batch_size, rank)
            with summary.stages.time("write"):
                write_partition(out, info, result)
            pairs.forget(p)
            summary.embedded.append(p)
            summary.rows += len(result.image_embeddings)
            summary.skipped += len(result.skipped)
    summary.seconds = time.perf_counter() - start
    return summary


def _check_sizes(batch_size: int, text_batch_size: int, workers: int) -> None:
    if batch_size < 1 or text_batch_size < 1:
        raise ValueError(f"batch sizes must be at least 1, got {batch_size} and {text_batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")


def _unfinished_partitions(out: str | Path, info: FolderInfo, rank: int, world: int) -> tuple[EmbedSummary, list[int]]:
    """This rank's partitions (partitions.rank_partitions), and those of them not finished in `out` yet."""
    mine = rank_partitions(info.partitions, rank, world)
    done = set(finished_partitions(out, info))
    return EmbedSummary(info.partitions, mine, [p for p in mine if p in done]), [p for p in mine if p not in done]


class _PartitionPairs:
    """Partition index -> its pairs, listed once: the sampler (main process, a few batches ahead) and the
    partition loop both ask, so a shard is indexed once; a written partition is forgotten."""

    def __init__(self, plan: InputPlan) -> None:
        self.plan = plan
        self.cache: dict[int, list[Pair]] = {}
        self.damaged: dict[int, list[tuple[str, str]]] = {}

    def __call__(self, p: int) -> list[Pair]:
        if p not in self.cache:
            listing = self.plan.read_partition(p)
            self.cache[p], self.damaged[p] = listing.pairs, listing.damaged
        return self.cache[p]

    def forget(self, p: int) -> None:
        self.cache.pop(p, None)
        self.damaged.pop(p, None)


def _image_loader(
    image_processor: AlignImageProcessor,
    draft_decode: bool,
    todo: list[int],
    pairs: Callable[[int], list[Pair]],
    batch_size: int,
    workers: int,
    model: AlignModel,
) -> DataLoader:
    """Decoded, preprocessed image batches of the partitions `todo`, in order, never crossing a partition."""
    return DataLoader(
        _PairImages(image_processor.steps(), image_reader(image_processor, draft_decode)),
        batch_sampler=_PartitionBatches(todo, pairs, batch_size),
        num_workers=workers,
        collate_fn=collate_images,
        persistent_workers=False,
        **loader_options(next(model.parameters()).device, workers),
    )


def _images_in(plan: InputPlan, todo: list[int]) -> int | None:
    """Images in the partitions `todo`, for the progress bar; None for shards (counted only when opened)."""
    if plan.row_groups is not None:
        shards = {s for p in todo for s, _ in plan.row_groups[p]}
        sizes = {s: row_group_sizes(plan.shards[s]) for s in shards}
        return sum(sizes[s][g] for p in todo for s, g in plan.row_groups[p])
    if plan.pairs is None:
        return None
    size = plan.partition_size
    return sum(min(size, len(plan.pairs) - p * size) for p in todo)


@dataclass
class _PartitionStep:
    """One partition's work: its index, its pairs, the shared loader and how many of its batches hold them,
    and where to report progress and unreadable images."""

    index: int
    pairs: list[Pair]
    damaged: list[tuple[str, str]]  # (shard, reason) for a truncated or unreadable shard
    loader: Iterator[ImageBatch]
    batches: int
    bar: tqdm
    on_failure: Callable[[str, str], None] | None
    clock: StageClock


def _embed_partition(
    model: AlignModel,
    tokenizer: AlignTokenizer,
    input_kind: str,
    info: FolderInfo,
    step: _PartitionStep,
    text_batch_size: int,
    rank: int,
) -> PartitionResult:
    """Images (and captions when the folder has them) of one partition -> the rows and metadata to write."""
    start = time.perf_counter()
    image_emb, good, skipped = _embed_partition_images(model, step, info.dim)
    text_emb = _embed_captions(model, tokenizer, good, text_batch_size, info.dim) if info.captions else None
    return PartitionResult(
        index=step.index,
        image_embeddings=_store(image_emb, info.dtype),
        text_embeddings=None if text_emb is None else _store(text_emb, info.dtype),
        metadata=_partition_metadata(good, info.captions, input_kind),
        skipped=skipped,
        seconds=time.perf_counter() - start,
        rank=rank,
    )


def _embed_partition_images(
    model: AlignModel, step: _PartitionStep, dim: int
) -> tuple[torch.Tensor, list[Pair], list[dict[str, str]]]:
    """The partition's batches through the embedding mapper: (n_good, dim) float32 unit rows, the pairs whose
    images were read (row order), and {"image_path", "error"} for those that were not."""
    chunks, good, skipped = [], [], []
    # A truncated or unreadable shard is reported and recorded in the partition's marker like an unreadable
    # image, and the partition is finished with what could be read: a rerun never stops at it again.
    for name, reason in step.damaged:
        skipped.append({"image_path": path_to_text(name), "error": reason})
        if step.on_failure is not None:
            step.on_failure(path_to_text(name), reason)
    for _ in range(step.batches):
        batch = next(step.loader)
        for row, reason in batch.failures:
            path = image_name(step.pairs[row].image)
            skipped.append({"image_path": path, "error": reason})
            if step.on_failure is not None:
                step.on_failure(path, reason)
        if batch.pixel_values is not None:
            with step.clock.time("model"):
                chunks.append(encode_image_batch(model, batch.pixel_values))  # (b, P)
            good.extend(step.pairs[row] for row in batch.indices)
        step.bar.update(len(batch.indices) + len(batch.failures))
    return (torch.cat(chunks) if chunks else torch.empty(0, dim)), good, skipped


def _embed_captions(
    model: AlignModel, tokenizer: AlignTokenizer, good: list[Pair], batch_size: int, dim: int
) -> torch.Tensor:
    """(n_good, dim) float32 unit rows of the embedded images' captions (an absent caption: the empty text)."""
    if not good:
        return torch.empty(0, dim)
    return embed_texts(model, tokenizer, [q.caption or "" for q in good], batch_size=batch_size)


def _partition_metadata(good: list[Pair], captions: bool, input_kind: str) -> dict[str, list]:
    """The metadata columns of a partition, one value per embedded row: image_path, then caption, key, url (shards)
    or the input's other columns (Parquet and rows: ids, urls, split; a name already taken gets `input_`)."""
    metadata: dict[str, list] = {"image_path": [image_name(q.image) for q in good]}
    if captions:
        metadata["caption"] = [q.caption for q in good]
    if input_kind == "shards":
        metadata["key"] = [q.key for q in good]
        metadata["url"] = [q.url for q in good]
    names = dict.fromkeys(name for q in good for name in q.extra or {})
    for name in names:
        metadata["input_" + name if name in metadata else name] = [(q.extra or {}).get(name) for q in good]
    return metadata


def _store(vectors: torch.Tensor, dtype: str) -> np.ndarray:
    """(n, d) float32 unit rows from the mapper -> the folder's dtype."""
    return vectors.numpy().astype(dtype)


@renamed_keywords(model="source", fused="fuse")
def embed_collection(
    inputs: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Mapping],
    out: str | os.PathLike,
    *,
    source: str | os.PathLike | ModelSource = defaults.MODEL,
    image_column: str | None = None,
    caption_column: str | None = None,
    device: str = "auto",
    partition_size: int = PARTITION_SIZE,
    dtype: str = "float16",
    fuse: bool = True,
    model_class: type[AlignModel] | str | None = None,
    backend: str = "torch",
    batch_size: int = IMAGE_BATCH,
    workers: int = 0,
    progress: bool = False,
    on_failure: Callable[[str, str], None] | None = None,
    draft_decode: bool = False,
) -> EmbedSummary:
    """`align-torch embed INPUT --out DIR` from Python: list and partition `inputs` (paths, or a sequence of
    mappings such as a `datasets.Dataset`; Parquet and rows columns found by name or named), load the model that
    `source` names (a folder or Hub repo id; fused unless `fuse` is False; as
    `model_class`, an AlignModel subclass or 'module:Class', if given, else the class the folder `out` records;
    its towers on `backend`), and embed this process's unfinished partitions into the folder `out`. Under torchrun
    each process takes its rank's partitions and the GPU `cuda:LOCAL_RANK`. For a model already in memory, call
    `embed_to_folder`."""
    from ..inference.loader import load_for_inference
    from ..inference.model_class import follow_model_class
    from .partitions import plan_input

    env = torchrun_env()
    where = rank_device(device, env)
    plan = plan_input(inputs, partition_size, image_column, caption_column)
    # A rerun finishing a folder embeds with the class that began it, and refuses another before a download.
    recorded = FolderInfo.load(out).model_class if (Path(out) / INFO_FILE).is_file() else None
    model_class = follow_model_class(model_class, recorded, f"embeddings folder {str(out)!r}")
    source = resolve_model(source)
    loaded, processor = load_for_inference(source, where, fuse=fuse, model_class=model_class, backend=backend)
    return embed_to_folder(
        loaded,
        processor.image_processor,
        processor.tokenizer,
        plan,
        out,
        source=source,
        dtype=dtype,
        fuse=fuse,
        batch_size=batch_size,
        workers=workers,
        rank=env.rank,
        world=env.world,
        progress=progress,
        bar_position=env.local_rank,
        on_failure=on_failure,
        draft_decode=draft_decode,
    )
