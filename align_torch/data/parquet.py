"""Parquet shards with the images inside, as the Hugging Face Hub stores image-caption sets (datasets' `Image`
feature: a `{bytes, path}` struct) and as img2dataset writes them (raw `jpg`/`png`/`webp` bytes and `txt`),
or with a column of image paths (a manifest). Captions are a string or a list of strings.

Listing reads every column but the images, row group by row group; an image is read later with its row group
(one row group per process is kept), so memory is bounded by a row group, not by the file.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

from .columns import CAPTION_COLUMNS, caption_list, pick_column
from .images import ImageLoadError, decode_image, load_image
from .samples import ImageRef, Pair, PairList, ParquetImage

PARQUET_SUFFIX = ".parquet"


class ParquetError(ValueError):
    """A shard that cannot be read, or whose columns do not fit; names the shard (and row and column)."""


@dataclass(frozen=True)
class Columns:
    """Which columns hold what in a set of shards, and how the image is stored."""

    image: str
    image_kind: str  # "struct" ({bytes, path}), "bytes" or "path"
    caption: str | None
    extra: tuple[str, ...]  # scalar columns carried along (ids, urls, keys, split)


def expand_parquet(specs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Parquet files, folders (their *.parquet, searched recursively) and globs -> the files, sorted per spec."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    return list(dict.fromkeys(f for spec in specs for f in _parquet_files(Path(spec).expanduser())))


def _parquet_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob(f"*{PARQUET_SUFFIX}") if p.is_file())
    if path.is_file():
        return [path]
    return sorted(Path(p) for p in glob.glob(os.fspath(path)) if Path(p).is_file())


def is_parquet_folder(path: Path) -> bool:
    return path.is_dir() and next(path.rglob(f"*{PARQUET_SUFFIX}"), None) is not None


def _open(shard: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(shard)
    except Exception as e:  # pyarrow raises its own types for a damaged or foreign file
        raise ParquetError(f"{shard}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def _image_kind(shard: Path, name: str, kind) -> str:
    import pyarrow as pa

    if pa.types.is_struct(kind) and {"bytes", "path"} & {f.name for f in kind}:
        return "struct"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "bytes"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "path"
    raise ParquetError(f"{shard}: column {name!r} is {kind}, not an image ({{bytes, path}} struct, bytes, or a path)")


def find_columns(
    shard: Path, image_column: str | None = None, caption_column: str | None = None, require_caption: bool = True
) -> Columns:
    """The image and caption columns of `shard` (named, or found by name) and its other scalar columns."""
    import pyarrow as pa

    schema = _open(shard).schema_arrow
    names = list(schema.names)
    image = pick_column(str(shard), names, image_column, "image", ParquetError)
    caption = pick_column(str(shard), names, caption_column, "caption", ParquetError)
    if caption is None and require_caption:
        raise ParquetError(
            f"{shard}: no caption column (tried {', '.join(CAPTION_COLUMNS)}; columns: {', '.join(names)}); "
            "name it with --caption-column"
        )
    if caption is not None:
        kind = schema.field(caption).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_list(kind)):
            raise ParquetError(f"{shard}: column {caption!r} is {kind}, not a caption (a string or a list of strings)")
    extra = tuple(
        n for n in names if n not in (image, caption) and _is_scalar(schema.field(n).type) and not n.startswith("__")
    )
    return Columns(image, _image_kind(shard, image, schema.field(image).type), caption, extra)


def _is_scalar(kind) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_string(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    )


@dataclass(frozen=True)
class Selection:
    """Which rows become which pairs: `split` keeps rows whose `split` column equals it; `captions` is "each"
    (a pair per caption, the first `captions_per_image` of them) or "first" (a pair per row)."""

    split: str | None = None
    captions: str = "each"
    captions_per_image: int | None = None
    require_caption: bool = True

    @classmethod
    def of(cls, require_caption: bool, split: str | None = None, captions_per_image: int | None = None) -> Selection:
        """Fine-tuning (`require_caption`): a pair per caption; embedding: a pair per row, its first caption."""
        return cls(split, "each" if require_caption else "first", captions_per_image, require_caption)

    def pairs(self, image: ImageRef, captions: list[str], extra: dict) -> list[Pair]:
        """One row's pairs: a pair per caption (up to captions_per_image), or one with the first caption (or none)."""
        if self.captions == "first" or not captions:
            return [Pair(image, captions[0] if captions else None, extra=extra)]
        return [Pair(image, c, extra=extra) for c in captions[: self.captions_per_image]]


def read_row_groups(shard: Path, groups: Sequence[int], columns: Columns, select: Selection) -> PairList:
    """The pairs of some row groups of one shard, in stored order (images are read later, see load_parquet_image)."""
    if select.split is not None and "split" not in columns.extra:
        raise ParquetError(f"{shard}: no 'split' column to select split {select.split!r} from")
    wanted = [columns.caption] if columns.caption is not None else []
    wanted += list(columns.extra) + ([columns.image] if columns.image_kind == "path" else [])
    parquet = _open(shard)
    offsets = [0]
    for g in range(parquet.num_row_groups):
        offsets.append(offsets[-1] + parquet.metadata.row_group(g).num_rows)
    pairs, empty = [], 0
    for g in groups:
        try:
            rows = parquet.read_row_group(g, columns=list(dict.fromkeys(wanted))).to_pylist()
        except Exception as e:  # a damaged page: name where
            raise ParquetError(f"{shard}: row group {g} is damaged ({type(e).__name__}: {e})") from None
        for r, row in enumerate(rows):
            index = offsets[g] + r
            if select.split is not None and row.get("split") != select.split:
                continue
            made = _row_pairs(shard, g, r, index, row, columns, select)
            empty += made is None
            pairs.extend(made or [])
    return PairList(pairs, empty)


def _row_pairs(
    shard: Path, group: int, r: int, index: int, row: dict, columns: Columns, select: Selection
) -> list[Pair] | None:
    """One row's pairs; None when it has no caption and one is required."""
    where = f"{shard}: row {index}"
    captions = (
        [] if columns.caption is None else caption_list(row[columns.caption], f"{where}, column {columns.caption!r}")
    )
    if not captions and select.require_caption:
        return None
    if columns.image_kind == "path":
        value = row[columns.image]
        if not value:
            raise ParquetError(f"{where}, column {columns.image!r}: empty image path")
        path = Path(value).expanduser()
        image = path if path.is_absolute() else shard.parent / path
    else:
        image = ParquetImage(os.fspath(shard), group, r, index, columns.image)
    extra = {name: row[name] for name in columns.extra}
    return select.pairs(image, captions, extra)


def read_parquet(
    shards: Sequence[Path],
    select: Selection | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
) -> PairList:
    """All pairs of the shards, shard by shard, row group by row group; raises when there are none."""
    select = select or Selection()
    if not shards:
        raise FileNotFoundError("no Parquet shards given")
    pairs, empty = [], 0
    for shard in shards:
        columns = find_columns(shard, image_column, caption_column, select.require_caption)
        part = read_row_groups(shard, range(_open(shard).num_row_groups), columns, select)
        pairs.extend(part.pairs)
        empty += part.skipped_empty_captions
    if not pairs:
        what = "an image and a caption" if select.require_caption else "an image"
        split = f" in split {select.split!r}" if select.split is not None else ""
        raise ValueError(f"no rows with {what}{split} in {len(shards)} Parquet shard(s), e.g. {shards[0]}")
    return PairList(pairs, empty)


def row_group_sizes(shard: Path) -> list[int]:
    """Rows in each row group of `shard`, from its footer alone."""
    metadata = _open(shard).metadata
    return [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]


class _RowGroupCache:
    """The image column of the row group read last, per process: DataLoader workers (forked) each read their own,
    and images asked for in stored order read each row group once."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.values = None

    def column(self, image: ParquetImage):
        key = (os.getpid(), image.shard, image.row_group, image.column)
        if key != self.key:
            self.key, self.values = None, None  # let the last row group go before reading the next
            table = _open(Path(image.shard)).read_row_group(image.row_group, columns=[image.column])
            self.values, self.key = table.column(0), key
        return self.values


_CACHE = _RowGroupCache()


def load_parquet_image(image: ParquetImage, draft: tuple[int, int] | None = None) -> PIL.Image.Image:
    """The RGB image of one Parquet cell: a struct's `bytes` (else its `path`, relative to the shard) or the raw
    bytes; ImageLoadError naming shard, row and column when it cannot be read."""
    where = f"{image.shard}: row {image.index}, column {image.column!r}"
    try:
        value = _CACHE.column(image)[image.row].as_py()
    except Exception as e:  # a damaged shard or page
        raise ImageLoadError(where, f"unreadable Parquet row group ({type(e).__name__}: {e})") from None
    if isinstance(value, dict):
        if value.get("bytes"):
            return decode_image(value["bytes"], where, draft)
        if value.get("path"):
            path = Path(value["path"])
            return load_image(path if path.is_absolute() else Path(image.shard).parent / path, draft)
        raise ImageLoadError(where, "neither bytes nor a path")
    if value is None:
        raise ImageLoadError(where, "no image (null)")
    return decode_image(value, where, draft)
