"""The records the readers return: an image (a file, a member of a tar shard, a cell of a Parquet shard, or an
image a Python sequence holds) with its optional caption."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TarMember:
    """An image stored inside a tar shard, read by seeking to its data."""

    shard: str
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class ParquetImage:
    """An image stored inside a Parquet shard (a `{bytes, path}` struct or a bytes column), read with its row
    group: row `row` of row group `row_group`, row `index` of the shard."""

    shard: str
    row_group: int
    row: int
    index: int
    column: str


@dataclass(frozen=True, eq=False)
class MemoryImage:
    """An image a Python sequence holds: a PIL image, or encoded bytes; `index` is its row."""

    data: Any  # PIL.Image.Image | bytes
    index: int


ImageRef = Path | TarMember | ParquetImage | MemoryImage


@dataclass(frozen=True)
class Pair:
    """One sample: an image (ImageRef), its caption (None when the input has none), for WebDataset shards the
    sample's key and url (from its .json when there is one), and for Parquet the row's other scalar columns."""

    image: ImageRef
    caption: str | None
    key: str | None = None
    url: str | None = None
    extra: dict[str, Any] | None = field(default=None, compare=False)


@dataclass
class PairList:
    """What a reader gives: the usable pairs, how many samples were left out for an empty caption, and the input
    files that were damaged (a truncated shard: its complete samples are in `pairs`), with why."""

    pairs: list[Pair]
    skipped_empty_captions: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
