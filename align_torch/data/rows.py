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

from .captions import caption_list
from .images import ImageLoadError, decode_image, to_rgb_image
from .parquet import CAPTION_COLUMNS, IMAGE_COLUMNS, Selection
from .samples import MemoryImage, Pair, PairList

_SCALARS = (str, int, float, bool)  # the values carried along as metadata


def is_rows(value: object) -> bool:
    """True for a sequence of mappings (rows), not for a path or a list of paths."""
    if isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, Sequence) or len(value) == 0:
        return False
    return isinstance(value[0], Mapping)


def _column(row: Mapping, given: str | None, candidates: Sequence[str], what: str) -> str | None:
    if given is not None:
        if given not in row:
            raise ValueError(f"row 0 has no {what} column {given!r} (columns: {', '.join(map(str, row))})")
        return given
    found = next((c for c in candidates if c in row), None)
    if found is None and what == "image":
        raise ValueError(
            f"row 0 has no image column (tried {', '.join(candidates)}; columns: {', '.join(map(str, row))})"
        )
    return found


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
    image_key = _column(first, image_column, IMAGE_COLUMNS, "image")
    caption_key = _column(first, caption_column, CAPTION_COLUMNS, "caption")
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
        if select.captions == "first" or not captions:
            pairs.append(Pair(image, captions[0] if captions else None, extra=extra))
        else:
            pairs.extend(Pair(image, c, extra=extra) for c in captions[: select.captions_per_image])
    if not pairs:
        raise ValueError(f"none of the {len(rows)} rows has an image and a caption")
    return PairList(pairs, empty)


def load_memory_image(image: MemoryImage) -> PIL.Image.Image:
    """The RGB image of a row: decoded bytes, or the PIL image converted as a file's would be."""
    where = f"row {image.index}"
    if isinstance(image.data, (bytes, bytearray)):
        return decode_image(bytes(image.data), where)
    try:
        return to_rgb_image(PIL.ImageOps.exif_transpose(image.data))
    except Exception as e:  # as for a file: one bad image is reported, never fatal
        raise ImageLoadError(where, f"unreadable image ({type(e).__name__}: {e})") from None
