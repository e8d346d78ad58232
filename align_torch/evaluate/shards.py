"""Evaluation over torchrun ranks: each rank embeds a contiguous share of the inputs and the rows are gathered
in input order on every rank, so every rank computes the same figures as one process would.

Every function here is a collective when `distributed` is true and a process group with more than one rank
is initialised: all ranks must call it, with the same inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist

from ..inference.embed import ImageEmbeddings, embed_images, embed_texts
from ..model.align import AlignModel
from ..preprocess.image_processing import AlignImageProcessor
from ..preprocess.tokenizer import AlignTokenizer


def rank_and_world(distributed: bool) -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) when not distributed."""
    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def percent(hits: torch.Tensor) -> float:
    """100 * (number of true entries) / (number of entries), counted exactly rather than as a float32 mean."""
    return 100.0 * int(hits.sum()) / hits.numel()


def share(n: int, rank: int, world: int) -> slice:
    """Rank `rank`'s contiguous share of n items; the shares of ranks 0..world-1 cover 0..n in order."""
    return slice(n * rank // world, n * (rank + 1) // world)


def _collective_device() -> torch.device:
    # NCCL carries CUDA tensors only; gloo (and a "cpu:gloo,cuda:nccl" group's CPU half) carries CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """(n_r, D) on each rank -> (sum of n_r, D) on the CPU, rank 0's rows first; shares may differ in size."""
    device = _collective_device()
    count = torch.tensor([rows.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = torch.zeros(max(sizes), *rows.shape[1:], dtype=rows.dtype, device=device)  # all_gather needs one shape
    padded[: rows.shape[0]] = rows.to(device)
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([part[:size].cpu() for part, size in zip(out, sizes, strict=True)])


def gather_lists(items: list) -> list:
    """Every rank's list, concatenated in rank order (small Python objects: paths, failure reasons)."""
    out: list[list] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(out, items)
    return [item for part in out for item in part]


def embed_images_sharded(
    model: AlignModel,
    image_processor: AlignImageProcessor,
    paths: Sequence[str | os.PathLike],
    *,
    distributed: bool = False,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
) -> ImageEmbeddings:
    """`embed_images` with the paths split over the ranks and the result gathered on every rank."""
    rank, world = rank_and_world(distributed)
    mine = list(paths)[share(len(paths), rank, world)]
    local = embed_images(
        model, image_processor, mine, batch_size=batch_size, workers=workers, progress=progress and rank == 0
    )
    if world == 1:
        return local
    return ImageEmbeddings(gather_rows(local.vectors), gather_lists(local.paths), gather_lists(local.failures))


def embed_texts_sharded(
    model: AlignModel,
    tokenizer: AlignTokenizer,
    texts: Sequence[str],
    *,
    distributed: bool = False,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """`embed_texts` with the texts split over the ranks; (N, P) gathered on every rank."""
    rank, world = rank_and_world(distributed)
    if world == 1:
        return embed_texts(model, tokenizer, texts, batch_size=batch_size, progress=progress)
    mine = list(texts)[share(len(texts), rank, world)]
    if mine:
        local = embed_texts(model, tokenizer, mine, batch_size=batch_size, progress=progress and rank == 0)
    else:  # more ranks than texts
        local = torch.empty(0, model.config.projection_dim)
    return gather_rows(local)
