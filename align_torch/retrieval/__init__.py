"""Embedding collections at scale: the embeddings folder (clip-retrieval's layout), partitions, resume and
torchrun ranks (see layout.py for the folder itself); reading a folder in chunks, FAISS indexes, search and the
search page.

`Collection`, `search` and `EmbeddingFolder` are imported on first use, so reading a folder or building an index
does not load PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Collection", "EmbeddingFolder", "Hit", "search"]


def __getattr__(name: str) -> Any:
    if name in ("Collection", "Hit", "search"):
        # collection.py holds them; `search` (the function) is no submodule name, so nothing shadows it
        return getattr(importlib.import_module(f"{__name__}.collection"), name)
    if name == "EmbeddingFolder":
        from .folder import EmbeddingFolder

        return EmbeddingFolder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
