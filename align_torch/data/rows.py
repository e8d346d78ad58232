"""A Python sequence of mappings as pairs: `{"image": PIL image | bytes | path | {bytes, path}, "caption": str |
list of str, ...}` per row. A `datasets.Dataset` is one (indexing gives a dict per row), read without importing
`datasets`; the column names are found as for Parquet."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import PIL.Image
import PIL.ImageOps

from .columns import CAPTION_COLUMNS, caption_list, pick_column
from .images import ImageLoadError, decode_image, to_rgb_image
from .parquet import Selection
from .samples import MemoryImage, PairList

_SCALARS = (str, int, float, bool)  # the values carried along as metadata


def is_rows(value: object) -> bool:
    """True for a sequence of mappings (rows), not for a path or a list of paths. A `datasets.Dataset` is no
    registered Sequence: anything with a length and integer indexing counts."""
    if (
        isinstance(value, (str, bytes, os.PathLike))
        or not hasattr(value, "__getitem__")
        or not hasattr(value, "__len__")
    ):
        return False
    return len(value) > 0 and isinstance(value[0], Mapping)


def _image(value: Any, index: int, column: str) -> Path | MemoryImage:
    if isinstance(value, Mapping):  # datasets' Image(decode=False): {bytes, path}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (PIL.Image.Image, bytes, bytearray)):
        return MemoryImage(value, index)
    if isinstance(value, (str, os.PathLike)) and os.fspath(value):
        return Path(value).expanduser()
    raise ValueError(
        f"row {index}, column {column!r}: the image must be a PIL image, bytes or a path, found {type(value).__name__}"
    )


def read_rows(
    rows: Sequence[Mapping],
    select: Selection | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
) -> PairList:
    """Rows -> pairs: one per caption (select.captions "each") or per row ("first"); rows without a caption are
    counted and left out when one is required; `select.split` keeps the rows whose `split` equals it."""
    select = select or Selection()
    if len(rows) == 0:
        raise ValueError("no rows given")
    first = rows[0]
    image_key = pick_column("row 0", list(first), image_column, "image")
    caption_key = pick_column("row 0", list(first), caption_column, "caption")
    if caption_key is None and select.require_caption:
        raise ValueError(f"row 0 has no caption column (tried {', '.join(CAPTION_COLUMNS)})")
    pairs, empty = [], 0
    for i in range(len(rows)):
        row = rows[i]
        if select.split is not None and row.get("split") != select.split:
            continue
        where = f"row {i}, column {caption_key!r}"
        captions = caption_list(row.get(caption_key), where) if caption_key is not None else []
        if not captions and select.require_caption:
            empty += 1
            continue
        image = _image(row.get(image_key), i, image_key)
        extra = {k: v for k, v in row.items() if k not in (image_key, caption_key) and isinstance(v, _SCALARS)}
        pairs.extend(select.pairs(image, captions, extra))
    if not pairs:
        raise ValueError(f"none of the {len(rows)} rows has an image and a caption")
    return PairList(pairs, empty)


def load_memory_image(image: MemoryImage, draft: tuple[int, int] | None = None) -> PIL.Image.Image:
    """The RGB image of a row: decoded bytes (`draft`: load_image's), or the PIL image converted as a file's would
    be."""
    where = f"row {image.index}"
    if isinstance(image.data, (bytes, bytearray)):
        return decode_image(bytes(image.data), where, draft)
    try:
        return to_rgb_image(PIL.ImageOps.exif_transpose(image.data))
    except Exception as e:  # as for a file: one bad image is reported, never fatal
        raise ImageLoadError(where, f"unreadable image ({type(e).__name__}: {e})") from None
