"""Tests that start a few gloo ranks: one intra-op thread each (the rendezvous port: tests.helpers.ports)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
import torch
import torch.distributed as dist


@pytest.fixture
def one_thread():
    """One intra-op thread while the test runs (several rank processes share the cores), then as before."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def gloo_group(rank: int, world: int, port: int) -> Iterator[None]:
    """This process as rank `rank` of a `world`-rank gloo group on this machine, with one intra-op thread; the
    group is destroyed after, however the block ends."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def run_gloo_rank(
    rank: int,
    world: int,
    port: int,
    out: str,
    splits: Mapping[int, Sequence[int]],
    batch: Any,
    steps: Callable[[Any], Iterator[tuple[str, dict]]],
) -> None:
    """One rank of a `world`-rank gloo test: its rows of `batch` (`splits[world]` rows per rank), each named result
    of `steps(local rows)` with its "loss" averaged over the ranks; rank 0 saves them to `out`."""
    with gloo_group(rank, world, port):
        split = splits[world]
        start = sum(split[:rank])
        results = {}
        for name, result in steps(batch.rows(start, start + split[rank])):
            dist.all_reduce(result["loss"])
            result["loss"] = float(result["loss"]) / world
            results[name] = result
        if rank == 0:
            torch.save(results, out)
