"""A row's caption as the datasets store it: a string, a list of strings (COCO's and Flickr30k's five), or a
list of Karpathy-style `{"raw": text}` objects."""

from __future__ import annotations

from typing import Any


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
