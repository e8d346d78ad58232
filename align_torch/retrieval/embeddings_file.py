"""The embeddings file written by `align-torch embed` / `embed-text` and searched by `align-torch search`.

Format: one safetensors file (readable without align_torch) holding
- tensor "embeddings": (N, D) float32, each row L2-normalised, so a dot product is a cosine similarity;
- string metadata: "format" = "align_torch.embeddings", "version" = "3", "kind" = "image" or "text",
  "model" = the model name or folder that produced them, "model_class" = a JSON record of the model's class
  ({"class": "module:Class", "source": "sha256:..."} of a user's AlignModel subclass, {"class":
  "align_torch:AlignModel", "source": null} for the stock one; util/class_record.py), "items" = a JSON list of the N items in row order (image
  file paths as listed on the command line, or the texts), "skipped" = a JSON list of {"item", "error"} for
  inputs that could not be embedded, "backend" = what ran the towers
  (inference.backend: "torch", "onnxruntime" or "image onnxruntime, text torch"; absent in older files: torch).

Image paths are stored with `fileio.path_to_text`: a UTF-8 name as it is, any other name (bytes that are
not UTF-8, or starting with "file:") as "file:" + percent-encoded bytes, so every name the OS gives comes
back byte for byte (`fileio.text_to_path`).

Every file align_torch has written reads (READABLE): version "1" (image paths stored as they are, so only UTF-8
names), version "2" (paths as above) under the format names "align_torch.embeddings" and, written for a while,
"align_torch.inference.embed", and version "3" (the model class recorded). Files before version 3 record no
class (model_class None): their reader chooses it.

Read it with `EmbeddingFile.load(path)`, or with safetensors alone:
`safe_open(path, "pt")` -> `.get_tensor("embeddings")`, `json.loads(.metadata()["items"])`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..util.class_record import check_record
from ..util.fileio import atomic_file, check_readable, path_to_text, text_to_path
from .hit import Hit

FORMAT = "align_torch.embeddings"
VERSION = "3"
# (format, version) of every file align_torch has written -> whether its image paths went through path_to_text.
READABLE = {
    ("align_torch.embeddings", "1"): False,
    ("align_torch.embeddings", "2"): True,
    ("align_torch.inference.embed", "2"): True,  # the name while the format's home was inference/embed.py
    (FORMAT, VERSION): True,
}
KINDS = ("image", "text")


class EmbeddingFileError(ValueError):
    """A file that is not a readable align_torch embeddings file; names the file and what is wrong."""


@dataclass
class EmbeddingFile:
    """N normalised embeddings and the items they belong to, searchable by cosine similarity."""

    vectors: torch.Tensor  # (N, D) float32, L2-normalised
    items: list[str]  # texts, or image paths as str (bytes that are not UTF-8 as surrogate escapes, os.fsdecode)
    kind: str  # "image" or "text"
    model: str
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"item", "error"}
    backend: str = "torch"  # inference.backend.backend_of: what ran the towers
    model_class: dict[str, Any] | None = None  # util/class_record.py; None: not recorded (files before version 3)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be (N, D), got shape {tuple(self.vectors.shape)}")
        if len(self.items) != len(self.vectors):
            raise ValueError(f"{len(self.items)} items for {len(self.vectors)} embeddings; they must match")

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the file atomically: a reader sees the old file or the complete new one, never a part."""
        encode = path_to_text if self.kind == "image" else str
        metadata = {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "model": self.model,
            "items": json.dumps([encode(i) for i in self.items], ensure_ascii=False),
            "skipped": json.dumps([{**s, "item": encode(s["item"])} for s in self.skipped], ensure_ascii=False),
            "backend": self.backend,
        }
        if self.model_class is not None:
            metadata["model_class"] = json.dumps(self.model_class, ensure_ascii=False)
        path = Path(path)
        with atomic_file(path) as tmp:
            save_file({"embeddings": self.vectors.float().contiguous()}, tmp, metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingFile:
        """Read a file written by `save`; raises EmbeddingFileError naming what is wrong."""
        path = check_readable(path, "embeddings file", EmbeddingFileError)
        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
                if metadata.get("format") not in {name for name, _ in READABLE}:
                    raise EmbeddingFileError(
                        f"{str(path)!r} is a safetensors file but not an align_torch embeddings file "
                        "(write one with `align-torch embed` or `align-torch embed-text`)"
                    )
                if "embeddings" not in f.keys():
                    raise EmbeddingFileError(f"{str(path)!r} has no 'embeddings' tensor")
                vectors = f.get_tensor("embeddings")
        except (SafetensorError, OSError) as e:
            raise EmbeddingFileError(f"{str(path)!r} is not a readable safetensors file: {e}") from e
        if not vectors.is_floating_point() or vectors.ndim != 2:
            raise EmbeddingFileError(
                f"{str(path)!r}: 'embeddings' is {vectors.dtype} of shape {tuple(vectors.shape)}; it must be (N, D) "
                "floating point"
            )
        finite = torch.isfinite(vectors).all(dim=1)  # (N,)
        if not finite.all():
            row = int((~finite).nonzero()[0, 0])
            raise EmbeddingFileError(f"{str(path)!r}: 'embeddings' row {row} holds NaN or infinite values")
        version = metadata.get("version")
        if (metadata["format"], version) not in READABLE:
            readable = ", ".join(sorted({repr(v) for _, v in READABLE}))
            raise EmbeddingFileError(
                f"{str(path)!r} has embeddings format version {version!r}; this align_torch reads versions "
                f"{readable} (a newer align_torch wrote it, or the file was edited)"
            )
        try:
            kind = metadata["kind"]
            decode = text_to_path if kind == "image" and READABLE[metadata["format"], version] else str
            skipped = json.loads(metadata.get("skipped", "[]"))
            record = json.loads(metadata["model_class"]) if "model_class" in metadata else None
            return cls(
                vectors=vectors,
                items=[decode(i) for i in json.loads(metadata["items"])],
                kind=kind,
                model=metadata["model"],
                skipped=[{**s, "item": decode(s["item"])} for s in skipped],
                backend=metadata.get("backend", "torch"),
                model_class=check_record(record, repr(str(path))),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError, ValueError) as e:
            raise EmbeddingFileError(f"{str(path)!r} has broken metadata: {e}") from e

    def search(self, query: torch.Tensor, k: int = 10) -> list[Hit]:
        """The k rows most similar to `query` ((D,), normalised here), best first."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        query = query.reshape(-1).float()
        if query.shape[0] != self.dim:
            raise ValueError(
                f"the query embedding has {query.shape[0]} dimensions but the file's have {self.dim}: "
                f"were they made by a different model? The file was made with {self.model!r}"
            )
        scores = self.vectors.float() @ torch.nn.functional.normalize(query, dim=0)  # (N,)
        top = torch.topk(scores, min(k, len(scores)))
        field = "image_path" if self.kind == "image" else "caption"
        return [
            Hit(r + 1, int(i), float(s), **{field: self.items[int(i)]}, target=self.kind)
            for r, (s, i) in enumerate(zip(top.values, top.indices, strict=True))
        ]
