"""Columns of a table of images (Parquet, Python rows): found by name or named, and a caption cell as the
datasets store it: a string, a list of strings (COCO's and Flickr30k's five), or a list of Karpathy-style
`{"raw": text}` objects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Tried in order when no column is named: datasets' and the Hub's names first, then img2dataset's.
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "image_path", "image_file", "filepath")
CAPTION_COLUMNS = ("caption", "captions", "text", "txt", "sentences", "sentence", "raw", "alt_text")


def pick_column(
    where: str, names: Sequence[str], given: str | None, what: str, error: type[ValueError] = ValueError
) -> str | None:
    """The `what` ("image" or "caption") column among `names`: `given`, which must exist, else the first of the
    usual names; None for a caption column not found. `error` (naming `where`) when there is none."""
    candidates = IMAGE_COLUMNS if what == "image" else CAPTION_COLUMNS
    if given is not None:
        if given not in names:
            raise error(f"{where}: no column {given!r} (columns: {', '.join(map(str, names))})")
        return given
    found = next((c for c in candidates if c in names), None)
    if found is None and what == "image":
        raise error(
            f"{where}: no image column (tried {', '.join(candidates)}; columns: {', '.join(map(str, names))}); "
            "name it with --image-column"
        )
    return found


def caption_list(value: Any, where: str) -> list[str]:
    """The non-empty captions of one cell, stripped, in order; ValueError naming `where` for any other kind."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, (list, tuple)):
        captions = []
        for item in value:
            text = item.get("raw") if isinstance(item, dict) else item
            if text is not None and not isinstance(text, str):
                raise ValueError(f"{where}: a caption must be a string or a list of strings, found {item!r}"[:300])
            if text and text.strip():
                captions.append(text.strip())
        return captions
    raise ValueError(f"{where}: a caption must be a string or a list of strings, found {type(value).__name__}")
