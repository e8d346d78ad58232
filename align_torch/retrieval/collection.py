"""Searching an embeddings folder or file: text->image, image->image, text->text, many queries at once.

`Collection.open(path)` takes a clip-retrieval-layout folder or a single embeddings file (.safetensors). With a
FAISS index built for the searched modality (`align-torch index`) the index answers; otherwise the search is
exact, streamed over the folder a chunk at a time, so it works on folders larger than memory. Exact results are
ordered by score, ties by row id (the lower first), as a full sort of all scores would order them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..util.fileio import path_to_text
from .folder import EmbeddingFolder, EmbeddingFolderError, unit_rows
from .hit import Hit

TARGETS = ("image", "text")


def exact_top_k(chunks: Iterable[tuple[int, np.ndarray]], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (Q, <=k), of the k rows with the largest inner product with each query, over
    (first id, (n, D) rows) chunks; one chunk in memory at a time."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)  # (Q, D)
    best_scores = np.empty((len(queries), 0), np.float32)
    best_ids = np.empty((len(queries), 0), np.int64)
    for start, chunk in chunks:
        scores = queries @ chunk.T  # (Q, n)
        n = scores.shape[1]
        if n > k:
            kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # (Q, 1) k-th largest per query
            keep = [np.flatnonzero(row >= t) for row, t in zip(scores, kth[:, 0], strict=True)]  # ties kept
        else:
            keep = [np.arange(n)] * len(queries)
        width = max(len(c) for c in keep)
        cand_ids = np.full((len(queries), width), -1, np.int64)
        cand_scores = np.full((len(queries), width), -np.inf, np.float32)
        for q, cols in enumerate(keep):
            cand_ids[q, : len(cols)] = cols + start
            cand_scores[q, : len(cols)] = scores[q, cols]
        all_scores = np.concatenate([best_scores, cand_scores], axis=1)
        all_ids = np.concatenate([best_ids, cand_ids], axis=1)
        unused = np.where(all_ids < 0, np.iinfo(np.int64).max, all_ids)  # padding sorts last among equals
        order = np.lexsort((unused, -all_scores), axis=-1)[:, :k]
        best_scores = np.take_along_axis(all_scores, order, axis=1)
        best_ids = np.take_along_axis(all_ids, order, axis=1)
    return best_scores, best_ids


class Collection:
    """An embeddings folder or file opened for search, with the model that embeds its queries loaded on first
    use (as `model_class`, an AlignModel subclass or 'module:Class', if given, else as the class the collection
    records; `use_model` for one in memory)."""

    def __init__(
        self,
        path: str | os.PathLike,
        model: str | None = None,
        device: str = "auto",
        use_index: bool = True,
        model_class: Any = None,
    ):
        self.path = Path(path)
        self.device = device
        self.model_class = model_class
        self.use_index = use_index
        self._indexes: dict[str, Any] = {}
        self._model = None
        if self.path.is_dir():
            self.folder: EmbeddingFolder | None = EmbeddingFolder(self.path)
            self.file = None
            recorded = self.folder.model
            self.recorded_class = self.folder.model_class
        else:
            from .embeddings_file import EmbeddingFile

            self.folder = None
            self.file = EmbeddingFile.load(self.path)
            recorded = self.file.model
            self.recorded_class = self.file.model_class
        self.model_name = model or recorded

    @property
    def targets(self) -> list[str]:
        """What can be searched here: "image" and/or "text" embeddings."""
        return self.folder.modalities if self.folder is not None else [self.file.kind]

    def count(self, target: str) -> int:
        return self.folder.count(target) if self.folder is not None else len(self.file.items)

    def searchable_rows(self, target: str) -> int:
        """The rows a search of `target` ranks; none is refused (an empty answer would look like a search that
        found nothing)."""
        rows = self.count(target)
        if rows == 0:
            raise ValueError(f"{str(self.path)!r} holds 0 {target} embeddings: there is nothing to search")
        return rows

    def dim(self, target: str) -> int:
        return self.folder.dim(target) if self.folder is not None else self.file.dim

    def resolve_target(self, target: str | None) -> str:
        """The embeddings a query searches: `target`, or image when the collection has them, else text."""
        target = target or ("image" if "image" in self.targets else self.targets[0])
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if target not in self.targets:
            raise ValueError(
                f"{str(self.path)!r} has no {target} embeddings to search (it has: {', '.join(self.targets)})"
            )
        return target

    def index(self, target: str):
        """The FAISS index for `target`, or None (no index, or use_index=False)."""
        if not self.use_index or self.folder is None:
            return None
        if target not in self._indexes:
            from .index import load_index

            try:
                self._indexes[target] = load_index(self.folder, target)
            except ImportError as e:  # an index is there but FAISS is not: say how to go on
                raise ValueError(f"{e}; or search exactly with --exact (use_index=False)") from None
        return self._indexes[target]

    def _chunks(self, target: str) -> Iterator[tuple[int, np.ndarray]]:
        if self.folder is not None:
            for start, chunk in self.folder.chunks(target):
                yield start, unit_rows(chunk)
        else:
            yield 0, self.file.vectors.float().numpy()

    def search_vectors(
        self, queries: np.ndarray, k: int = 10, target: str | None = None, exact: bool = False
    ) -> list[list[Hit]]:
        """Top-k hits per query vector ((Q, D) or (D,), normalised here), best first; k beyond the collection's
        rows gives every row."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an integer of at least 1, got {k!r}")
        target = self.resolve_target(target)
        k = min(k, self.searchable_rows(target))  # an index allocates (Q, k) results whatever the collection holds
        queries = self._checked_queries(queries, target)
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        queries = queries / np.where(norms > 0, norms, 1)
        index = None if exact else self.index(target)
        if index is not None:
            scores, ids = index.search(queries, k)
        else:
            scores, ids = exact_top_k(self._chunks(target), queries, k)
        return [self._hits(row_scores, row_ids, target) for row_scores, row_ids in zip(scores, ids, strict=True)]

    def _checked_queries(self, queries: np.ndarray, target: str) -> np.ndarray:
        """(Q, D) float32 queries of the collection's dimension, every component finite (a NaN query scores
        every row NaN, and the top k of those is arbitrary)."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dim(target):
            where = "the file's" if self.file is not None else f"the {target} embeddings of {str(self.path)!r}"
            raise ValueError(
                f"the query embedding has {queries.shape[1]} dimensions but {where} have {self.dim(target)}: were "
                f"they made by a different model? They were made with {self.model_name!r}"
            )
        finite = np.isfinite(queries).all(axis=1)
        if not finite.all():
            raise ValueError(f"query {int(np.argmin(finite))} holds NaN or infinity: a query must be finite numbers")
        return queries

    def _hits(self, scores: np.ndarray, ids: np.ndarray, target: str) -> list[Hit]:
        # Rows and queries are unit length, so a score is a cosine; float32 rounding can still pass 1 by ~1e-7.
        found = [(min(1.0, max(-1.0, float(s))), int(i)) for s, i in zip(scores, ids, strict=True) if i >= 0]
        if self.folder is not None:
            rows = self.folder.metadata([i for _, i in found])
            return [
                Hit(
                    rank + 1,
                    i,
                    s,
                    image_path=row.get("image_path"),
                    caption=row.get("caption"),
                    extra={k: v for k, v in row.items() if k not in ("image_path", "caption")},
                    target=target,
                )
                for rank, ((s, i), row) in enumerate(zip(found, rows, strict=True))
            ]
        if self.file.kind == "image":  # paths as text: a name that is not UTF-8 as fileio.path_to_text writes it
            fields = [{"image_path": path_to_text(self.file.items[i])} for _, i in found]
        else:
            fields = [{"caption": self.file.items[i]} for _, i in found]
        return [
            Hit(rank + 1, i, s, **f, target=target) for rank, ((s, i), f) in enumerate(zip(found, fields, strict=True))
        ]

    def require_model_name(self) -> str:
        """The model that embeds queries: the one given, else the one the collection records."""
        if not self.model_name:
            raise ValueError(
                f"{str(self.path)!r} does not record the model that made it; name it with --model (model=...)"
            )
        return self.model_name

    def query_model_class(self) -> Any:
        """The class that embeds queries: `model_class` if given, else the one the collection records (its module
        imported by name); a given class other than the recorded one is refused, naming both."""
        from ..inference.model_class import follow_model_class, print_note

        return follow_model_class(self.model_class, self.recorded_class, repr(str(self.path)), print_note)

    def use_model(self, model: Any, processor: Any) -> None:
        """Embed queries with this (AlignModel, AlignProcessor) instead of loading the collection's model."""
        self._model = (model, processor)

    def _load_model(self):
        if self._model is None:
            self.require_model_name()
            from ..inference.loader import load_for_inference

            model, processor = load_for_inference(self.model_name, self.device, model_class=self.query_model_class())
            self._model = (model, processor)
        return self._model

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(Q, D) normalised query embeddings of texts, with the collection's model."""
        from ..inference.embed import embed_texts

        if isinstance(texts, str) or not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("queries must be a non-empty list of non-blank strings")
        model, processor = self._load_model()
        return embed_texts(model, processor.tokenizer, list(texts)).numpy()

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """(Q, D) normalised embeddings of images (paths or PIL images), with the collection's model."""
        import torch

        from ..data.images import load_image

        model, processor = self._load_model()
        pil = [load_image(im) if isinstance(im, (str, os.PathLike)) else im for im in images]
        param = next(model.parameters())
        with torch.no_grad():
            pixels = processor(images=pil)["pixel_values"].to(param.device, param.dtype)
            return model.encode_image(pixels, normalize=True).float().cpu().numpy()

    def search(
        self,
        text: str | Sequence[str] | None = None,
        image: Any | Sequence[Any] | None = None,
        k: int = 10,
        target: str | None = None,
        exact: bool = False,
    ) -> list[list[Hit]]:
        """Top-k hits for each text query or each image query (a path or PIL image, or a list of them)."""
        if (text is None) == (image is None):
            raise ValueError("give either text or image queries")
        if text is not None:
            queries = self.embed_texts([text] if isinstance(text, str) else text)
        else:
            many = isinstance(image, (list, tuple))
            queries = self.embed_images(list(image) if many else [image])
        return self.search_vectors(queries, k, target, exact)


def search(
    path: str | os.PathLike, query: str, k: int = 10, target: str | None = None, model: str | None = None
) -> list[Hit]:
    """The k rows of an embeddings folder or file that best match a text query, best first."""
    return Collection(path, model=model).search(text=query, k=k, target=target)[0]


__all__ = ["Collection", "EmbeddingFolderError", "Hit", "exact_top_k", "search"]
