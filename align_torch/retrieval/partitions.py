"""Cutting an input into deterministic partitions and sharing them among torchrun ranks.

Folders, globs, file lists, manifests and Python rows are listed once, in order, and cut into partitions of
`partition_size` items; WebDataset input gives one partition per shard, indexed only when it is embedded;
Parquet input is cut at row-group boundaries into partitions of about `partition_size` rows (from the shards'
footers alone), each read only when it is embedded.
The cut depends only on the input and `partition_size`, so every rank, every rerun and every machine sees
the same partitions; rank r of W takes partitions r, r + W, r + 2W, ...
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data import MANIFEST_SUFFIXES, Pair, Selection, expand_shards, is_parquet, is_rows, list_images, read_manifest
from ..data.parquet import ParquetError, expand_parquet, find_columns, read_row_groups, row_group_sizes
from ..data.rows import read_rows
from ..data.samples import MemoryImage, PairList
from ..data.shards import ShardError, read_shard
from ..defaults import PARTITION_SIZE

KINDS = ("images", "manifest", "shards", "parquet", "rows")


@dataclass
class InputPlan:
    """The input, listed: `pairs` for images, manifests and rows, `shards` for WebDataset and Parquet input (and
    for Parquet, the (shard, row group) of each partition)."""

    kind: str  # one of KINDS
    inputs: list[str]  # the INPUT arguments, made absolute
    partition_size: int | None  # None for shards: one partition per shard
    pairs: list[Pair] | None = None
    shards: list[Path] | None = None
    captions: bool = False
    row_groups: list[list[tuple[int, int]]] | None = None  # Parquet: per partition, (shard index, row group)
    columns: tuple[str | None, str | None] = (None, None)  # Parquet: the image and caption columns asked for

    @property
    def partitions(self) -> int:
        if self.row_groups is not None:
            return len(self.row_groups)
        if self.shards is not None:
            return len(self.shards)
        return -(-len(self.pairs) // self.partition_size)  # ceil

    @property
    def items(self) -> int:
        """Images listed, or shards."""
        return len(self.shards) if self.shards is not None else len(self.pairs)

    def fingerprint(self) -> str:
        """sha256 of the listing (paths and captions, or shard paths and sizes): a changed input changes it."""
        h = hashlib.sha256()
        if self.shards is not None:
            h.update(repr(self.columns).encode() if self.kind == "parquet" else b"")
            for shard in self.shards:
                h.update(os.fsencode(shard) + b"\0" + str(shard.stat().st_size).encode() + b"\n")
        else:
            for pair in self.pairs:
                h.update(
                    _image_identity(pair.image) + b"\0" + (pair.caption or "").encode("utf-8", "surrogatepass") + b"\n"
                )
        return h.hexdigest()

    def partition(self, index: int) -> list[Pair]:
        """The samples of partition `index`, in order (a shard is indexed here, reading headers only)."""
        return self.read_partition(index).pairs

    def read_partition(self, index: int) -> PairList:
        """Partition `index` as its reader gives it: the samples, and for a shard whether it is damaged (a
        truncated shard keeps its complete samples; one that is no tar at all has none, and says why)."""
        if not 0 <= index < self.partitions:
            raise IndexError(f"partition {index} out of range 0..{self.partitions - 1}")
        if self.row_groups is not None:
            return self._read_row_groups(self.row_groups[index])
        if self.shards is not None:
            try:
                return read_shard(self.shards[index], require_caption=False, metadata=True)
            except ShardError as e:
                return PairList([], 0, [(e.shard, e.reason)])
        return PairList(self.pairs[index * self.partition_size : (index + 1) * self.partition_size])

    def _read_row_groups(self, groups: list[tuple[int, int]]) -> PairList:
        """A Parquet partition's rows, one pair per row; a damaged row group is reported (as a damaged tar shard
        is) and its rows left out."""
        pairs, damaged = [], []
        for s, g in groups:
            shard = self.shards[s]
            try:
                columns = find_columns(shard, *self.columns, require_caption=False)
                pairs += read_row_groups(shard, [g], columns, Selection.of(require_caption=False)).pairs
            except ParquetError as e:
                damaged.append((os.fspath(shard), str(e).removeprefix(f"{shard}: ")))
        return PairList(pairs, 0, damaged)


def _image_identity(image: Path | MemoryImage) -> bytes:
    """What names an image in the fingerprint: its path, or a row's index and pixels or bytes."""
    if not isinstance(image, MemoryImage):
        return os.fsencode(image)
    data = image.data if isinstance(image.data, (bytes, bytearray)) else image.data.tobytes()
    return f"row {image.index}:".encode() + hashlib.sha256(data).digest()


def _is_shards(spec: str) -> bool:
    path = Path(spec).expanduser()
    if path.is_dir():
        return any(path.glob("*.tar")) and not _folder_images(path)
    return spec.endswith(".tar")


def _folder_images(folder: Path) -> list[Path]:
    try:
        return list_images(folder)
    except FileNotFoundError:
        return []


def plan_input(
    specs: Sequence[str | os.PathLike] | Sequence[Mapping],
    partition_size: int = PARTITION_SIZE,
    image_column: str | None = None,
    caption_column: str | None = None,
) -> InputPlan:
    """INPUT arguments -> an InputPlan. One kind per run: a manifest (.csv/.tsv/.jsonl), Parquet (.parquet files,
    globs or folders of them; images inside or a path column, columns found by name or named), WebDataset shards
    (.tar files, brace ranges such as `shards/{00000..00999}.tar`, or a folder of .tar), image files, folders and
    globs, or a Python sequence of mappings (rows such as a `datasets.Dataset`)."""
    if partition_size < 1:
        raise ValueError(f"partition_size must be at least 1, got {partition_size}")
    if is_rows(specs):
        pairs = read_rows(specs, Selection.of(require_caption=False), image_column, caption_column).pairs
        captions = any(p.caption is not None for p in pairs)
        return InputPlan("rows", [f"{len(specs)} rows"], partition_size, pairs=pairs, captions=captions)
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    specs = [os.fspath(s) for s in specs]
    if not specs:
        raise ValueError("no INPUT given")
    if is_parquet(specs):
        return _plan_parquet(specs, partition_size, (image_column, caption_column))
    absolute = [os.path.abspath(os.path.expanduser(s)) for s in specs]
    manifests = [s for s in specs if s.endswith(MANIFEST_SUFFIXES)]
    shards = [s for s in specs if _is_shards(s)]
    if manifests:
        if len(specs) != 1:
            raise ValueError(f"a manifest must be the only INPUT, got {len(specs)} inputs: {specs}")
        pairs = read_manifest(specs[0], require_caption=False).pairs
        pairs = [Pair(Path(os.path.abspath(p.image)), p.caption) for p in pairs]
        captions = any(p.caption is not None for p in pairs)
        return InputPlan("manifest", absolute, partition_size, pairs=pairs, captions=captions)
    if shards:
        if len(shards) != len(specs):
            raise ValueError(f"WebDataset shards cannot be mixed with image files in one run: {specs}")
        found = sorted({Path(os.path.abspath(p)) for s in specs for p in expand_shards(s)})
        if not found:
            raise FileNotFoundError(f"no .tar shards match {specs}")
        captions = any(p.caption is not None for p in _first_readable(found).pairs)
        return InputPlan("shards", absolute, None, shards=found, captions=captions)
    files = [Path(os.path.abspath(p)) for p in list_images(specs)]
    return InputPlan("images", absolute, partition_size, pairs=[Pair(f, None) for f in files])


def _plan_parquet(specs: list[str], partition_size: int, columns: tuple[str | None, str | None]) -> InputPlan:
    """Parquet shards cut at row-group boundaries: a partition takes row groups, in order, while it stays within
    `partition_size` rows (a larger row group is a partition alone). Every shard's columns are checked here."""
    shards = [Path(os.path.abspath(p)) for p in expand_parquet(specs)]
    if not shards:
        raise FileNotFoundError(f"no .parquet files match {specs}")
    found = [find_columns(shard, *columns, require_caption=False) for shard in shards]
    partitions: list[list[tuple[int, int]]] = [[]]
    rows = 0
    for s, shard in enumerate(shards):
        for g, size in enumerate(row_group_sizes(shard)):
            if partitions[-1] and rows + size > partition_size:
                partitions.append([])
                rows = 0
            partitions[-1].append((s, g))
            rows += size
    absolute = [os.path.abspath(os.path.expanduser(s)) for s in specs]
    captions = any(c.caption is not None for c in found)
    return InputPlan(
        "parquet", absolute, partition_size, shards=shards, captions=captions, row_groups=partitions, columns=columns
    )


def _first_readable(shards: list[Path]) -> PairList:
    """The first shard that reads (a damaged one is reported when its partition is embedded, not here)."""
    for shard in shards:
        try:
            return read_shard(shard, require_caption=False)
        except ShardError:
            continue
    return PairList([])


def rank_partitions(count: int, rank: int, world: int) -> list[int]:
    """Partitions r, r + W, r + 2W, ... of `count` for rank r of W."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in 0..{world - 1}, got {rank}")
    return list(range(rank, count, world))
