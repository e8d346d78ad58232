"""Evaluation over torchrun ranks: each rank embeds a contiguous share of the inputs and the rows are gathered
in input order on every rank, so every rank computes the same figures as one process would.

Every function here is a collective when `distributed` is true and a process group with more than one rank
is initialised: all ranks must call it, with the same inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..defaults import IMAGE_BATCH, TEXT_BATCH
from ..inference.embed import ImageEmbeddings, embed_images, embed_texts
from ..model.align import AlignModel
from ..preprocess.image_processing import AlignImageProcessor
from ..preprocess.tokenizer import AlignTokenizer
from ..util.distributed import collective_device, gather_objects, gather_rows, rank_and_world


def percent(hits: torch.Tensor) -> float:
    """100 * (number of true entries) / (number of entries), counted exactly rather than as a float32 mean."""
    return 100.0 * int(hits.sum()) / hits.numel()


def share(n: int, rank: int, world: int) -> slice:
    """Rank `rank`'s contiguous share of n items; the shares of ranks 0..world-1 cover 0..n in order."""
    return slice(n * rank // world, n * (rank + 1) // world)


def _gather_to_cpu(rows: torch.Tensor) -> torch.Tensor:
    """(n_r, D) on each rank -> (sum of n_r, D) on the CPU, rank 0's rows first; shares may differ in size."""
    return gather_rows(rows.to(collective_device())).cpu()


def _gather_lists(items: list) -> list:
    """Every rank's list, concatenated in rank order (small Python objects: paths, failure reasons)."""
    return [item for part in gather_objects(items) for item in part]


def embed_images_sharded(
    model: AlignModel,
    image_processor: AlignImageProcessor,
    paths: Sequence[str | os.PathLike],
    *,
    distributed: bool = False,
    batch_size: int = IMAGE_BATCH,
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
    return ImageEmbeddings(_gather_to_cpu(local.vectors), _gather_lists(local.paths), _gather_lists(local.failures))


def embed_texts_sharded(
    model: AlignModel,
    tokenizer: AlignTokenizer,
    texts: Sequence[str],
    *,
    distributed: bool = False,
    batch_size: int = TEXT_BATCH,
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
    return _gather_to_cpu(local)
