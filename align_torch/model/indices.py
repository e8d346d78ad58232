"""Picking positions out of a sequence of hidden states, timm-style: negatives count from the end."""

from __future__ import annotations

from collections.abc import Sequence


def take_indices(indices: Sequence[int] | None, n: int, what: str) -> set[int]:
    """Positions in range(n) for `indices` (None: all of them); an index outside [-n, n) raises IndexError."""
    if indices is None:
        return set(range(n))
    out = set()
    for i in indices:
        if not -n <= i < n:
            raise IndexError(f"{what} index {i} out of range for {n} positions")
        out.add(i % n)
    return out
