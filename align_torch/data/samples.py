"""The records the readers return: an image (a file or a member of a tar shard) with its optional caption."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TarMember:
    """An image stored inside a tar shard, read by seeking to its data."""

    shard: str
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class Pair:
    """One sample: an image file or tar member, its caption (None when the input has none), and for
    WebDataset shards the sample's key and url (from its .json when there is one)."""

    image: Path | TarMember
    caption: str | None
    key: str | None = None
    url: str | None = None


@dataclass
class PairList:
    """What a reader gives: the usable pairs, how many samples were left out for an empty caption, and the input
    files that were damaged (a truncated shard: its complete samples are in `pairs`), with why."""

    pairs: list[Pair]
    skipped_empty_captions: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
