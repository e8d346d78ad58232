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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from .. import __name__ as _package
from ..checkpoint.hub import model_reference, resolve_model_dir
from ..data import ImageLoadError, Pair, TarMember, load_pair_image
from ..data.images import ImageItem, collate_images
from ..inference.embed import embed_texts, eval_mode
from ..model.align import AlignModel
from ..preprocess.image_processing import AlignImageProcessor
from ..preprocess.tokenizer import AlignTokenizer
from ..util.fileio import path_to_text
from .layout import DTYPES, FolderInfo, finished_partitions
from .partitions import InputPlan, rank_partitions
from .writer import PartitionResult, prepare_folder, write_partition

_SAMPLE_BYTES = 1 << 20


def model_fingerprint(name_or_path: str) -> str:
    """sha256 over the model folder's weight and config files: names, sizes, and their first and last MiB,
    so weights retrained in place are noticed without reading gigabytes."""
    folder = resolve_model_dir(name_or_path)
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\n".encode())
        with open(path, "rb") as f:
            h.update(f.read(_SAMPLE_BYTES))
            if size > _SAMPLE_BYTES:
                f.seek(max(_SAMPLE_BYTES, size - _SAMPLE_BYTES))
                h.update(f.read())
    return h.hexdigest()


def folder_info(
    plan: InputPlan, model_name: str, model: AlignModel, dtype: str, fused: bool, compute: str
) -> FolderInfo:
    """The FolderInfo a run with these inputs, model and options writes (and must find)."""
    import importlib.metadata

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    try:
        version = importlib.metadata.version("align-torch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return FolderInfo(
        model=model_reference(model_name),
        model_fingerprint=model_fingerprint(model_name),
        fused=fused,
        compute=compute,
        dim=model.config.projection_dim,
        dtype=dtype,
        captions=plan.captions,
        input_kind=plan.kind,
        inputs=plan.inputs,
        input_items=plan.items,
        input_fingerprint=plan.fingerprint(),
        partition_unit="shard" if plan.kind == "shards" else "images",
        partition_size=plan.partition_size,
        partitions=plan.partitions,
        created_with={"package": _package, "version": version, "torch": torch.__version__},
    )


class _PairImages(Dataset):
    """Key (row, image) -> ImageItem(row, pixels) or ImageItem(row, None, reason); stateless, so the keys
    carry everything a worker needs."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __len__(self) -> int:
        raise TypeError("indexed by (row, image) keys from _PartitionBatches")

    def __getitem__(self, key: tuple[int, Path | TarMember]) -> ImageItem:
        row, image = key
        try:
            pixels = self.transform(load_pair_image(image))
        except ImageLoadError as e:
            return ImageItem(row, None, e.reason)
        except Exception as e:  # one bad file is reported for that file, never fatal to the run
            return ImageItem(row, None, f"preprocessing failed ({type(e).__name__}: {e})")
        return ImageItem(row, torch.from_numpy(np.array(pixels)))


class _PartitionBatches(Sampler):
    """Batches of (row, image) keys, partition after partition, never crossing a partition boundary; an empty
    partition yields one empty batch so the consumer still sees it."""

    def __init__(self, partitions: list[int], pairs: Callable[[int], list[Pair]], batch_size: int) -> None:
        self.partitions, self.pairs, self.batch_size = partitions, pairs, batch_size

    def __iter__(self) -> Iterator[list[tuple[int, Path | TarMember]]]:
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


def image_path(image: Path | TarMember) -> str:
    if isinstance(image, Path):
        return path_to_text(image)
    return path_to_text(os.fsencode(image.shard) + b":" + os.fsencode(image.name))


@torch.no_grad()
def embed_to_folder(
    model: AlignModel,
    image_processor: AlignImageProcessor,
    tokenizer: AlignTokenizer,
    plan: InputPlan,
    out: str | Path,
    *,
    model_name: str,
    dtype: str = "float16",
    fused: bool = True,
    batch_size: int = 32,
    text_batch_size: int = 256,
    workers: int = 0,
    rank: int = 0,
    world: int = 1,
    progress: bool = False,
    bar_position: int | None = None,
    on_failure: Callable[[str, str], None] | None = None,
) -> EmbedSummary:
    """Embed `plan`'s unfinished partitions that belong to `rank` into the folder `out` (created, or checked to
    have been made with the same model and arguments). Rows are L2-normalised and stored as `dtype`."""
    if batch_size < 1 or text_batch_size < 1:
        raise ValueError(f"batch sizes must be at least 1, got {batch_size} and {text_batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    device = next(model.parameters()).device
    autocast = device.type == "cuda"
    info = folder_info(plan, model_name, model, dtype, fused, "bf16-autocast" if autocast else "float32")
    prepare_folder(out, info)
    mine = rank_partitions(info.partitions, rank, world)
    done = set(finished_partitions(out, info))
    todo = [p for p in mine if p not in done]
    summary = EmbedSummary(info.partitions, mine, [p for p in mine if p in done])
    if not todo:
        return summary

    cache: dict[int, list[Pair]] = {}

    def pairs_of(p: int) -> list[Pair]:
        # Shared by the sampler (main process, a few batches ahead) and the loop below, so a shard is indexed once.
        if p not in cache:
            cache[p] = plan.partition(p)
        return cache[p]

    loader = DataLoader(
        _PairImages(image_processor.preprocess_one),
        batch_sampler=_PartitionBatches(todo, pairs_of, batch_size),
        num_workers=workers,
        collate_fn=collate_images,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    batches = iter(loader)
    size = plan.partition_size
    total = None if plan.pairs is None else sum(min(size, len(plan.pairs) - p * size) for p in todo)
    bar = tqdm(
        total=total,
        unit="img",
        file=sys.stderr,
        disable=not progress,
        position=rank if bar_position is None else bar_position,
        desc=f"rank {rank}",
    )
    start_all = time.perf_counter()
    with eval_mode(model), bar:
        for p in todo:
            start = time.perf_counter()
            pairs = pairs_of(p)
            chunks, rows, skipped = [], [], []
            for _ in range(batches_in(len(pairs), batch_size)):
                batch = next(batches)
                for row, reason in batch.failures:
                    skipped.append({"image_path": image_path(pairs[row].image), "error": reason})
                    if on_failure is not None:
                        on_failure(image_path(pairs[row].image), reason)
                if batch.pixel_values is not None:
                    pixels = batch.pixel_values.to(device, non_blocking=True)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                        chunks.append(model.encode_image(pixels, normalize=True).float().cpu())  # (b, P)
                    rows.extend(batch.indices)
                bar.update(len(batch.indices) + len(batch.failures))
            good = [pairs[r] for r in rows]
            image_emb = torch.cat(chunks) if chunks else torch.empty(0, info.dim)
            text_emb = None
            if info.captions:
                if good:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                        text_emb = embed_texts(
                            model, tokenizer, [q.caption or "" for q in good], batch_size=text_batch_size
                        )
                else:
                    text_emb = torch.empty(0, info.dim)
            metadata: dict[str, list] = {"image_path": [image_path(q.image) for q in good]}
            if info.captions:
                metadata["caption"] = [q.caption for q in good]
            if plan.kind == "shards":
                metadata["key"] = [q.key for q in good]
                metadata["url"] = [q.url for q in good]
            result = PartitionResult(
                index=p,
                image_embeddings=_store(image_emb, dtype),
                text_embeddings=None if text_emb is None else _store(text_emb, dtype),
                metadata=metadata,
                skipped=skipped,
                seconds=time.perf_counter() - start,
                rank=rank,
            )
            write_partition(out, info, result)
            cache.pop(p, None)
            summary.embedded.append(p)
            summary.rows += len(good)
            summary.skipped += len(skipped)
    summary.seconds = time.perf_counter() - start_all
    return summary


def _store(vectors: torch.Tensor, dtype: str) -> np.ndarray:
    """(n, d) -> unit rows in the folder's dtype (normalised again in float32, so float16 rows are unit too)."""
    vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
    return vectors.numpy().astype(dtype)


def torchrun_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); (0, 1, 0) alone."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def embed_collection(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str = "kakaobrain/align-base",
    device: str = "auto",
    partition_size: int = 10_000,
    dtype: str = "float16",
    fused: bool = True,
    model_class: type[AlignModel] | str | None = None,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
    on_failure: Callable[[str, str], None] | None = None,
) -> EmbedSummary:
    """`align-torch embed INPUT --out DIR` from Python: list and partition `inputs`, load `model` (as
    `model_class`, an AlignModel subclass or 'module:Class', if given), and embed this process's unfinished
    partitions into the folder `out`. Under torchrun each process takes its rank's partitions and the GPU
    `cuda:LOCAL_RANK`. For a model already in memory, call `embed_to_folder`."""
    from ..inference.loader import load_for_inference
    from ..util.device import resolve_device
    from .partitions import plan_input

    rank, world, local_rank = torchrun_rank()
    where = resolve_device(device)
    if where.type == "cuda":  # one GPU per process
        where = torch.device("cuda", local_rank)
        torch.cuda.set_device(where)
    plan = plan_input(inputs, partition_size)
    loaded, processor = load_for_inference(model, where, fuse=fused, model_class=model_class)
    return embed_to_folder(
        loaded,
        processor.image_processor,
        processor.tokenizer,
        plan,
        out,
        model_name=model,
        dtype=dtype,
        fused=fused,
        batch_size=batch_size,
        workers=workers,
        rank=rank,
        world=world,
        progress=progress,
        bar_position=local_rank,
        on_failure=on_failure,
    )
