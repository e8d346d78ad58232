"""Reading an embeddings folder in clip-retrieval's layout, a chunk at a time.

The layout (what clip-retrieval's `inference` writes and embedding-reader/autofaiss read):
    img_emb/img_emb_{N}.npy          (n_N, D) float16 or float32, L2-normalised rows
    text_emb/text_emb_{N}.npy        (n_N, D), when the inputs had captions
    metadata/metadata_{N}.parquet    n_N rows: image_path, caption, and key, url for WebDataset inputs
    *.json                           optional: the model, dims, dtype and partitioning
    done/done_{N}.json               align_torch's completion markers (layout.py)
When the folder is align_torch's (its embeddings.json says so), only partitions with a completion marker are
read, so a folder still being written (or interrupted) is searchable as far as it is finished. Parts are taken
in the numeric order of N; row r of part N is row `start_N + r` of the collection, the id an
index and a search result use. Files that are not parts (hidden temporaries, markers) are ignored.

Nothing is read whole: `chunks` streams a part with plain reads (the page cache holds the file, not this
process, so a build's resident memory stays at its chunk size however large the folder), `take` reads single
rows with pread, and `part_array` memory-maps one part for numpy users.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..util.class_record import check_record
from .layout import FORMAT as OURS

MODALITIES = {"image": ("img_emb", "img_emb"), "text": ("text_emb", "text_emb")}
METADATA_COLUMNS = ("image_path", "caption", "key", "url")
DTYPES = (np.dtype("<f2"), np.dtype("<f4"))


class EmbeddingFolderError(ValueError):
    """A folder that is not a readable embeddings folder; the message names the file and the problem."""


@dataclass(frozen=True)
class Part:
    """One npy part: where its rows start in the collection and where its data start in the file."""

    number: int
    path: Path
    start: int  # collection id of the part's first row
    rows: int
    dim: int
    dtype: np.dtype
    data_offset: int  # bytes before the first row (the npy header)

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of an .npy file, reading only its header."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (OSError, ValueError) as e:
        raise EmbeddingFolderError(f"{str(path)!r} is not a readable .npy file: {e}") from e
    if fortran:
        raise EmbeddingFolderError(f"{str(path)!r} is stored in Fortran order; rows must be contiguous")
    return shape, dtype, offset


def check_finite(rows: np.ndarray, path: str | os.PathLike, first: int = 0) -> np.ndarray:
    """`rows` ((n, D), rows `first`.. of the file `path`) unchanged, or EmbeddingFolderError naming the first row
    holding a NaN or an infinity: such a row would be searched and give scores that are not numbers."""
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        row = first + int(np.argmin(finite))
        raise EmbeddingFolderError(
            f"{str(path)!r} row {row} holds NaN or infinite values; embeddings must be finite (re-embed that part)"
        )
    return rows


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """(n, D) float32 rows divided by their length: a float16 part stores unit rows rounded to float16, whose length
    is 1 only to about 1e-4, so a dot product with them could pass 1; with this it is the cosine. A writable
    float32 array (every chunk and sample a folder hands out is a fresh one) is divided in place, so an index
    build holds no second copy of its chunk."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)  # (n, 1)
    out = rows if rows.dtype == np.float32 and rows.flags.writeable else rows.astype(np.float32)
    return np.divide(out, np.where(norms > 0, norms, 1), out=out)


def _numbered(folder: Path, prefix: str, suffix: str) -> dict[int, Path]:
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+){re.escape(suffix)}$")
    found = {}
    for entry in folder.iterdir() if folder.is_dir() else ():
        match = pattern.match(entry.name)
        if match and entry.is_file():
            found[int(match.group(1))] = entry
    return found


def _read_info(root: Path) -> dict[str, Any]:
    """The folder's description: the first top-level JSON object that names a model (none for a folder
    written by clip-retrieval itself)."""
    for path in sorted(root.glob("*.json")):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and "model" in info:
            return info
    return {}


class EmbeddingFolder:
    """An embeddings folder opened for reading: its parts per modality, row counts, rows and metadata."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise EmbeddingFolderError(f"embeddings folder {str(self.root)!r} does not exist or is not a folder")
        self.info = _read_info(self.root)
        self._parts = {m: self._scan(m) for m in MODALITIES}
        self._metadata_paths = _numbered(self.root / "metadata", "metadata", ".parquet")
        if self.info.get("format") == OURS:
            finished = set(_numbered(self.root / "done", "done", ".json"))
            self._metadata_paths = {n: p for n, p in self._metadata_paths.items() if n in finished}
            self._parts = {
                m: self._restart([p for p in parts if p.number in finished]) for m, parts in self._parts.items()
            }
        if not any(self._parts.values()):
            raise EmbeddingFolderError(
                f"{str(self.root)!r} has no finished img_emb/img_emb_N.npy or text_emb/text_emb_N.npy parts "
                "(write one with `align-torch embed ... --out FOLDER`)"
            )
        self._check_alignment()

    @staticmethod
    def _restart(parts: list[Part]) -> list[Part]:
        """The parts with their first ids counted again (after leaving unfinished ones out)."""
        out, start = [], 0
        for p in parts:
            out.append(Part(p.number, p.path, start, p.rows, p.dim, p.dtype, p.data_offset))
            start += p.rows
        return out

    def _scan(self, modality: str) -> list[Part]:
        sub, prefix = MODALITIES[modality]
        parts, start, dims = [], 0, set()
        for number, path in sorted(_numbered(self.root / sub, prefix, ".npy").items()):
            shape, dtype, offset = read_npy_header(path)
            if len(shape) != 2 or dtype not in DTYPES:
                raise EmbeddingFolderError(
                    f"{str(path)!r} holds a {dtype} array of shape {shape}; parts must be (rows, dims) float16 "
                    "or float32"
                )
            parts.append(Part(number, path, start, shape[0], shape[1], dtype, offset))
            start += shape[0]
            dims.add(shape[1])
        if len(dims) > 1:
            raise EmbeddingFolderError(f"the {sub} parts of {str(self.root)!r} have different widths {sorted(dims)}")
        return parts

    def _check_alignment(self) -> None:
        """Every modality's parts and the metadata parts must be row-aligned: same numbers, same row counts."""
        present = [m for m in MODALITIES if self._parts[m]]
        reference = {p.number: p.rows for p in self._parts[present[0]]}
        for modality in present[1:]:
            rows = {p.number: p.rows for p in self._parts[modality]}
            if rows != reference:
                raise EmbeddingFolderError(
                    f"{str(self.root)!r}: the {modality} parts do not line up with the {present[0]} parts "
                    f"(part: rows {rows} against {reference})"
                )
        if not self._metadata_paths:
            return
        if sorted(self._metadata_paths) != sorted(reference):
            raise EmbeddingFolderError(
                f"{str(self.root)!r}: metadata parts {sorted(self._metadata_paths)} do not match the embedding "
                f"parts {sorted(reference)}"
            )
        import pyarrow.parquet as pq

        for number, path in self._metadata_paths.items():
            rows = _parquet(path, lambda p: pq.ParquetFile(p).metadata.num_rows)
            if rows != reference[number]:
                raise EmbeddingFolderError(
                    f"{str(path)!r} has {rows} rows but its embeddings part has {reference[number]}"
                )

    @property
    def modalities(self) -> list[str]:
        """The modalities that have embeddings here ("image", "text")."""
        return [m for m in MODALITIES if self._parts[m]]

    @property
    def model(self) -> str | None:
        """The model that made the embeddings, when the folder records it."""
        model = self.info.get("model")
        return model if isinstance(model, str) else None

    @property
    def model_class(self) -> dict | None:
        """The model class that made the embeddings (util/class_record.py); None when the folder records none."""
        try:
            return check_record(self.info.get("model_class"), repr(str(self.root)))
        except ValueError as e:
            raise EmbeddingFolderError(str(e)) from None

    def parts(self, modality: str) -> list[Part]:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {tuple(MODALITIES)}, got {modality!r}")
        if not self._parts[modality]:
            raise EmbeddingFolderError(
                f"{str(self.root)!r} has no {modality} embeddings ({MODALITIES[modality][0]}/ is empty or missing)"
            )
        return self._parts[modality]

    def count(self, modality: str) -> int:
        return sum(p.rows for p in self.parts(modality))

    def dim(self, modality: str) -> int:
        return self.parts(modality)[0].dim

    def layout(self, modality: str) -> list[tuple[int, int]]:
        """(part number, rows) per part: what an index records to notice that the folder has changed."""
        return [(p.number, p.rows) for p in self.parts(modality)]

    def chunks(self, modality: str, rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(first id, (n <= rows, D) float32) over the whole collection in id order; never more than one chunk
        in memory."""
        if rows < 1:
            raise ValueError(f"rows must be at least 1, got {rows}")
        for part in self.parts(modality):
            with open(part.path, "rb", buffering=0) as f:
                for first in range(0, part.rows, rows):
                    n = min(rows, part.rows - first)
                    f.seek(part.data_offset + first * part.row_bytes)
                    data = f.read(n * part.row_bytes)
                    if len(data) != n * part.row_bytes:
                        raise EmbeddingFolderError(f"{str(part.path)!r} is shorter than its header says")
                    chunk = np.frombuffer(data, part.dtype).reshape(n, part.dim).astype(np.float32)
                    yield part.start + first, check_finite(chunk, part.path, first)

    def take(self, modality: str, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The rows with these ids, (len(ids), D) float32, in the order given."""
        parts = self.parts(modality)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        total = parts[-1].start + parts[-1].rows
        if ids.size and (ids.min() < 0 or ids.max() >= total):
            raise IndexError(f"ids must be in [0, {total}), got {ids.min()}..{ids.max()}")
        starts = np.array([p.start for p in parts])
        out = np.empty((len(ids), parts[0].dim), np.float32)
        which = np.searchsorted(starts, ids, side="right") - 1
        for k in np.unique(which):
            part = parts[k]
            fd = os.open(part.path, os.O_RDONLY)
            try:
                for i in np.flatnonzero(which == k):
                    data = os.pread(fd, part.row_bytes, part.data_offset + (int(ids[i]) - part.start) * part.row_bytes)
                    if len(data) != part.row_bytes:
                        raise EmbeddingFolderError(f"{str(part.path)!r} is shorter than its header says")
                    out[i] = check_finite(np.frombuffer(data, part.dtype)[None], part.path, int(ids[i]) - part.start)[0]
            finally:
                os.close(fd)
        return out

    def sample(self, modality: str, n: int, seed: int = 0) -> np.ndarray:
        """n distinct rows chosen at random (all rows when n >= count), (n, D) float32, in id order."""
        count = self.count(modality)
        if n >= count:
            return np.concatenate([chunk for _, chunk in self.chunks(modality)])
        ids = np.sort(np.random.default_rng(seed).choice(count, size=n, replace=False))
        return self.take(modality, ids)

    def part_array(self, modality: str, number: int) -> np.memmap:
        """One part memory-mapped read-only, as stored (float16 or float32)."""
        for part in self.parts(modality):
            if part.number == number:
                return np.load(part.path, mmap_mode="r")
        raise KeyError(f"no {modality} part numbered {number} in {str(self.root)!r}")

    def metadata(self, ids: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """image_path, caption (and key, url where present) of each id; {} for every id when the folder has no
        metadata."""
        if not self._metadata_paths:
            return [{} for _ in ids]
        parts = self._parts[self.modalities[0]]
        starts = np.array([p.start for p in parts])
        out = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1):
            part = parts[int(np.searchsorted(starts, i, side="right") - 1)]
            columns = self._metadata_part(part.number)
            out.append({name: values[int(i) - part.start] for name, values in columns.items()})
        return out

    @functools.lru_cache(maxsize=8)  # noqa: B019 (one folder object lives as long as its server)
    def _metadata_part(self, number: int) -> dict[str, list]:
        import pyarrow.parquet as pq

        path = self._metadata_paths[number]
        names = _parquet(path, lambda p: [c for c in METADATA_COLUMNS if c in pq.ParquetFile(p).schema_arrow.names])
        return _parquet(path, lambda p: pq.read_table(p, columns=names).to_pydict())


def _parquet(path: Path, read: Callable[[Path], Any]) -> Any:
    """`read(path)`, with pyarrow's errors for a damaged file (which do not name it) as EmbeddingFolderError."""
    import pyarrow as pa

    try:
        return read(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise EmbeddingFolderError(f"{str(path)!r} is not a readable Parquet file ({type(e).__name__}: {e})") from None
