"""FAISS indexes over an embeddings folder: choose a kind from N, dims and a memory budget, build it a chunk at a
time, write it atomically with the description a search needs.

The choice follows autofaiss's `get_optimal_index_keys_v2` (autofaiss itself pins numpy<2 and pandas<3, which do
not fit beside our dependencies, so its rule is reimplemented here):
- fewer than 1,000 vectors: flat (exact);
- fewer than 10,000: HNSW with 15 links;
- otherwise HNSW when M >= 8 links fit the budget (M up to 32);
- otherwise, below 1M vectors, IVF-Flat when it fits;
- otherwise IVF-PQ with the largest code (bytes per vector, from 256 down to 4) that fits.
IVF list counts are autofaiss's (the power of two nearest 4·sqrt(N) below 1M vectors, 16,384 below 10M, 65,536
below 300M, 131,072 beyond), halved while the k-means training sample they need (39 vectors per list, FAISS's
minimum) does not fit in the budget. Differences: no OPQ rotation (so PQ codes must divide the dimension), a flat
coarse quantizer (autofaiss uses an HNSW one from 1,000 lists), and the default search parameters come from a
rule (nprobe = lists / 16, efSearch 64) instead of autofaiss's timed tuning.

All indexes use inner product, which on L2-normalised rows is cosine similarity; ids are collection row ids
(see folder.py). The budget covers the index and the build's working buffers (training sample, added chunk),
not the Python interpreter and libraries.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..util.fileio import atomic_file
from . import compressed
from .folder import EmbeddingFolder, EmbeddingFolderError, unit_rows

FORMAT = "align_torch.faiss_index"
VERSION = "1"
KINDS = ("auto", "flat", "hnsw", "ivf-flat", "ivf-pq")
PQ_BYTES = (256, 128, 64, 48, 32, 24, 16, 8, 4)  # autofaiss's candidates, largest (most accurate) first
FLAT_BELOW, HNSW_BELOW, IVF_FLAT_BELOW = 1_000, 10_000, 1_000_000
MIN_TRAIN_PER_LIST, TRAIN_PER_LIST = 39, 64  # FAISS warns below 39 training points per k-means centroid
PQ_TRAIN_MIN, PQ_TRAIN_MAX = 39 * 256, 256 * 256  # FAISS's PQ k-means wants 39..256 points per code centroid
# Fewer vectors than this and FAISS's training fails inside the build: a PQ code's k-means has 256 centroids.
MIN_VECTORS = {"ivf-pq": 256}


def article(word: str) -> str:
    """'a' or 'an' before an index kind as it is read aloud: an int8, an ivf-pq, a flat, a binary."""
    return "an" if word[:1] in "aeiou" else "a"


MIN_PQ_SUB_DIMS = 16  # FAISS trains codebooks of narrower sub-vectors many times slower (10 dims: ~9x for 2x bytes)
ID_BYTES = 8  # an IVF list stores an int64 id beside each code
KMEANS_BUFFER = 4096 * 1024 * 4  # FAISS's k-means assigns in blocks of 4096 points x 1024 centroids (floats)
DEFAULT_EF_SEARCH = 64
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(text: str | int) -> int:
    """'4GB', '512M', '1.5GiB' or a number of bytes -> bytes (powers of 1024, as autofaiss reads them)."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(text).upper())
        if not match:
            raise ValueError(f"--max-memory must look like 4GB, 512MB or a number of bytes, got {text!r}")
        value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value <= 0:
        raise ValueError(f"--max-memory must be more than 0 bytes, got {text!r}")
    return value


@dataclass(frozen=True)
class IndexPlan:
    """What to build: the kind, its FAISS factory string and parameters, and the memory it needs."""

    kind: str  # flat, hnsw, ivf-flat, ivf-pq
    factory: str  # faiss.index_factory string, e.g. "IVF512,PQ64np"
    count: int
    dim: int
    index_bytes: int  # the finished index in memory
    train_rows: int = 0  # k-means sample for the IVF lists (0: no training)
    pq_train_rows: int = 0  # sample for the PQ codebooks
    chunk_rows: int = 65536  # vectors added per call
    search: dict[str, int] = field(default_factory=dict)  # default search parameters: nprobe or efSearch


def index_bytes(kind: str, count: int, dim: int, lists: int = 0, code_bytes: int = 0, links: int = 0) -> int:
    """Memory of a finished index of `count` vectors of `dim` float32 components."""
    if kind == "flat":
        return count * dim * 4
    if kind == "hnsw":
        return count * (dim + 2 * links) * 4  # vectors + 2*M int32 neighbours on level 0 (autofaiss's estimate)
    if kind == "ivf-flat":
        return count * (dim * 4 + ID_BYTES) + lists * dim * 4
    if kind == "ivf-pq":
        return count * (code_bytes + ID_BYTES) + lists * dim * 4 + 256 * dim * 4  # codes, centroids, codebooks
    raise ValueError(f"kind must be one of {KINDS[1:]}, got {kind!r}")


def autofaiss_lists(count: int) -> int:
    """autofaiss's first choice of IVF list count for `count` vectors."""
    if count < 1_000_000:
        return 2 ** round(math.log2(4 * math.sqrt(count)))
    if count < 10_000_000:
        return 16_384
    if count < 300_000_000:
        return 65_536
    return 131_072


def _chunk_rows(dim: int, free: int, code_bytes: int = 0) -> int:
    # a chunk costs its float32 copy and FAISS's residuals; PQ encoding also holds a distance table of
    # code_bytes x 256 floats per vector (ProductQuantizer::compute_codes), 13x the vector itself at PQ32/640 dims
    per_row = 2 * dim * 4 + code_bytes * 256 * 4
    return int(min(262_144, max(256, free // per_row)))


def _ivf_plan(kind: str, count: int, dim: int, budget: int, code_bytes: int = 0) -> IndexPlan | None:
    """An IVF plan fitting `budget`, with fewer lists when their training sample would not fit; None if none."""
    lists = min(autofaiss_lists(count), max(1, count // MIN_TRAIN_PER_LIST))
    while lists >= 1:
        size = index_bytes(kind, count, dim, lists=lists, code_bytes=code_bytes)
        free = budget - size
        pq_need = PQ_TRAIN_MIN * 2 * dim * 4 if kind == "ivf-pq" else 0  # sample + FAISS's residuals
        if free > 0 and max(MIN_TRAIN_PER_LIST * lists * dim * 4 + KMEANS_BUFFER, pq_need) <= free:
            train = min(count, TRAIN_PER_LIST * lists, (free - KMEANS_BUFFER) // (dim * 4))
            pq_train = min(count, PQ_TRAIN_MAX, free // (2 * dim * 4)) if kind == "ivf-pq" else 0
            # "np": no polysemous training, which only serves Hamming-filtered search and costs more than the rest
            code = f"PQ{code_bytes}np" if kind == "ivf-pq" else "Flat"
            return IndexPlan(
                kind,
                f"IVF{lists},{code}",
                count,
                dim,
                size,
                train_rows=int(train),
                pq_train_rows=int(pq_train),
                chunk_rows=_chunk_rows(dim, free, code_bytes),
                search={"nprobe": max(1, lists // 16)},
            )
        lists //= 2
    return None


def plan_index(count: int, dim: int, max_memory: int, kind: str = "auto", quantize: str | None = None) -> IndexPlan:
    """The index to build for `count` vectors of `dim` dims within `max_memory` bytes (see the module docstring).
    `quantize` ("int8" or "binary"): a compressed flat index whose candidates are rescored from the float vectors
    (see compressed.py)."""
    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if count < 1 or dim < 1:
        raise ValueError(f"nothing to index: {count} vectors of {dim} dims")
    if quantize is not None:
        return _compressed_plan(count, dim, max_memory, kind, quantize)
    if kind == "auto":
        kind = _auto_kind(count, dim, max_memory)
    if count < MIN_VECTORS.get(kind, 1):
        raise ValueError(
            f"--kind {kind} needs at least {MIN_VECTORS[kind]} vectors to train its codes, the folder has {count}; "
            "choose --kind flat or hnsw"
        )
    if kind == "flat":
        plan = IndexPlan("flat", "Flat", count, dim, index_bytes("flat", count, dim))
    elif kind == "hnsw":
        links = 15 if count < HNSW_BELOW else max(8, min(32, (max_memory // (4 * count) - dim) // 2))
        size = index_bytes("hnsw", count, dim, links=links)
        plan = IndexPlan("hnsw", f"HNSW{links}", count, dim, size, search={"efSearch": DEFAULT_EF_SEARCH})
    elif kind == "ivf-flat":
        plan = _ivf_plan("ivf-flat", count, dim, max_memory)
    else:
        plan = next(
            (
                p
                for m in pq_sizes(dim)
                for p in [_ivf_plan("ivf-pq", count, dim, max_memory, code_bytes=m)]
                if p is not None
            ),
            None,
        )
    if plan is None or plan.index_bytes + plan.train_rows * dim * 4 > max_memory:
        need = _min_bytes(kind, count, dim)
        raise ValueError(
            f"{article(kind)} {kind} index of {count:,} vectors of {dim} dims does not fit in --max-memory "
            f"{_fmt_bytes(max_memory)} (it needs about {_fmt_bytes(need)}); raise --max-memory"
            + ("" if kind == "ivf-pq" else " or choose --kind ivf-pq")
        )
    free = max_memory - plan.index_bytes
    if plan.kind in ("flat", "hnsw"):
        plan = IndexPlan(**{**asdict(plan), "chunk_rows": _chunk_rows(dim, free)})
    return plan


def _compressed_plan(count: int, dim: int, max_memory: int, kind: str, quantize: str) -> IndexPlan:
    if kind != "auto":
        raise ValueError(f"--quantize {quantize} builds a compressed flat index; leave out --kind {kind}")
    size = compressed.compressed_bytes(quantize, count, dim)  # also refuses an unknown quantize
    compressed.check_dim(quantize, dim)
    train = min(count, compressed.SQ_TRAIN_ROWS) if quantize == "int8" else 0
    if size + train * dim * 4 > max_memory:
        raise ValueError(
            f"{article(quantize)} {quantize} index of {count:,} vectors of {dim} dims does not fit in --max-memory "
            f"{_fmt_bytes(max_memory)} (it needs about {_fmt_bytes(size + train * dim * 4)}); raise --max-memory"
        )
    plan = IndexPlan(
        quantize, compressed.FACTORY[quantize], count, dim, size, search={"rescore": compressed.RESCORE[quantize]}
    )
    return IndexPlan(**{**asdict(plan), "train_rows": train, "chunk_rows": _chunk_rows(dim, max_memory - size)})


def pq_sizes(dim: int) -> list[int]:
    """The PQ code sizes (bytes per vector) usable at this dimension, largest first."""
    return [m for m in PQ_BYTES if dim % m == 0 and dim // m >= MIN_PQ_SUB_DIMS]


def _auto_kind(count: int, dim: int, budget: int) -> str:
    if count < FLAT_BELOW:
        return "flat"
    if count < HNSW_BELOW:
        return "hnsw"
    if (budget // (4 * count) - dim) // 2 >= 8:
        return "hnsw"
    if count < IVF_FLAT_BELOW and _ivf_plan("ivf-flat", count, dim, budget) is not None:
        return "ivf-flat"
    return "ivf-pq"


def _min_bytes(kind: str, count: int, dim: int) -> int:
    if kind == "ivf-pq":
        smallest = min(pq_sizes(dim), default=0)
        return index_bytes("ivf-pq", count, dim, lists=1, code_bytes=smallest) + PQ_TRAIN_MIN * 2 * dim * 4
    if kind == "ivf-flat":
        return index_bytes("ivf-flat", count, dim, lists=1) + MIN_TRAIN_PER_LIST * dim * 4
    return index_bytes(kind, count, dim, links=8)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f}{unit}"
        n /= 1024
    return f"{n:.1f}TB"


def memory_per_million(dim: int) -> dict[str, int]:
    """Bytes per million vectors of each kind at the parameters `auto` picks for 1M-10M vectors."""
    n = 1_000_000
    lists = autofaiss_lists(n)
    return {
        "flat": index_bytes("flat", n, dim),
        "hnsw (M=32)": index_bytes("hnsw", n, dim, links=32),
        "ivf-flat": index_bytes("ivf-flat", n, dim, lists=lists),
        **{f"ivf-pq (PQ{m})": index_bytes("ivf-pq", n, dim, lists=lists, code_bytes=m) for m in pq_sizes(dim)[:3]},
        **{f"{q} + rescore": compressed.compressed_bytes(q, n, dim) for q in compressed.QUANTIZE},
    }


def default_index_path(folder: EmbeddingFolder, modality: str) -> Path:
    return folder.root / "index" / f"{modality}.index"


def _info_path(index_path: Path) -> Path:
    return index_path.with_name(index_path.name + ".json")


@dataclass
class BuiltIndex:
    """What build_index wrote and how long it took."""

    path: Path
    info_path: Path
    plan: IndexPlan
    seconds: float


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError(
            'indexes need FAISS: pip install faiss-cpu (or pip install -e ".[index]" in the clone)'
        ) from e
    return faiss


def build_index(
    folder: EmbeddingFolder | str | Path,
    modality: str = "image",
    kind: str = "auto",
    max_memory: int | str = "4GB",
    out: str | Path | None = None,
    seed: int = 0,
    quantize: str | None = None,
) -> BuiltIndex:
    """Build an index of one modality of the folder, reading it in chunks, and write it (and its .json
    description) atomically; the index is `out` or FOLDER/index/{modality}.index. `quantize`: see plan_index."""
    faiss = _faiss()
    folder = folder if isinstance(folder, EmbeddingFolder) else EmbeddingFolder(folder)
    plan = plan_index(folder.count(modality), folder.dim(modality), parse_memory(max_memory), kind, quantize)
    out = Path(out) if out is not None else default_index_path(folder, modality)
    began = time.perf_counter()
    if quantize is not None:
        index = compressed.new_index(faiss, quantize, plan.dim)
        if plan.train_rows:  # the 8-bit quantizer's per-component ranges
            index.train(folder.sample(modality, plan.train_rows, seed))
    else:
        index = faiss.index_factory(plan.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
        if plan.train_rows:
            _train_ivf(faiss, index, folder, modality, plan, seed)
    for _, chunk in folder.chunks(modality, plan.chunk_rows):
        # ids follow the collection's row order; scores are then cosines
        index.add(unit_rows(chunk) if quantize is None else compressed.codes(quantize, unit_rows(chunk)))
    with atomic_file(out) as tmp:
        (faiss.write_index_binary if quantize == "binary" else faiss.write_index)(index, str(tmp))
    info = {
        "format": FORMAT,
        "version": VERSION,
        "modality": modality,
        "kind": plan.kind,
        "quantize": quantize,
        "factory": plan.factory,
        "metric": "inner_product",
        "count": plan.count,
        "dim": plan.dim,
        "layout": folder.layout(modality),
        "search": plan.search,
        "index_bytes": out.stat().st_size,
        "model": folder.model,
        "faiss": faiss.__version__,
    }
    info_path = _info_path(out)
    with atomic_file(info_path) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return BuiltIndex(out, info_path, plan, time.perf_counter() - began)


def _train_ivf(faiss, index, folder: EmbeddingFolder, modality: str, plan: IndexPlan, seed: int) -> None:
    """k-means for the lists on one sample, then (IVF-PQ) the codebooks on a second, smaller one, so the
    residuals FAISS computes for the codebooks never sit beside the k-means sample."""
    ivf = faiss.extract_index_ivf(index)
    sample = unit_rows(folder.sample(modality, plan.train_rows, seed))  # (train_rows, D) float32
    clustering = faiss.Clustering(plan.dim, ivf.nlist, ivf.cp)  # ivf.cp: spherical k-means for inner product
    clustering.seed = seed
    clustering.train(sample, ivf.quantizer)
    del sample
    pq_sample = unit_rows(folder.sample(modality, plan.pq_train_rows, seed + 1)) if plan.pq_train_rows else None
    # the lists' quantizer now holds nlist centroids, so FAISS trains only the codes here
    index.train(pq_sample if pq_sample is not None else np.zeros((1, plan.dim), np.float32))


# FAISS holds nprobe and efSearch in C ints; far beyond any useful value, and a bound keeps 10**12 from
# overflowing there.
MAX_SEARCH_PARAMETER = 1 << 20


def _check_info(info: dict[str, Any], info_path: Path) -> None:
    """The description's fields are of their kind and range (they decide what is read and how a search runs)."""

    def whole(value: Any, least: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    problems = []
    kinds = (*KINDS[1:], *compressed.FACTORY)
    if info.get("kind") not in kinds:
        problems.append(f"kind {info.get('kind')!r} is not one of {kinds}")
    for name, least in (("count", 1), ("dim", 1), ("index_bytes", 1)):
        if not whole(info.get(name), least):
            problems.append(f"{name} {info.get(name)!r} is not an integer of at least {least}")
    layout = info.get("layout")
    if not isinstance(layout, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(whole(v, 0) for v in p) for p in layout
    ):
        problems.append("layout is not a list of [part, rows] pairs")
    search = info.get("search")
    if not isinstance(search, dict) or not all(
        name in ("nprobe", "efSearch", "rescore") and whole(value, 1) and value <= MAX_SEARCH_PARAMETER
        for name, value in search.items()
    ):
        problems.append(
            f"search {search!r} is not {{nprobe, efSearch or rescore: an integer from 1 to {MAX_SEARCH_PARAMETER}}}"
        )
    if info.get("quantize") not in (None, *compressed.FACTORY):
        problems.append(f"quantize {info.get('quantize')!r} is not one of {tuple(compressed.FACTORY)}")
    if problems:
        raise EmbeddingFolderError(f"{str(info_path)!r} is damaged: {'; '.join(problems)}; rebuild the index")


@dataclass
class LoadedIndex:
    """A FAISS index read back with its description, search parameters applied. A compressed (int8 or binary)
    index searches `rescore` x k candidates and ranks them exactly from the folder's float vectors."""

    index: Any
    info: dict[str, Any]
    folder: EmbeddingFolder | None = None  # the float vectors a compressed index rescores from
    modality: str = "image"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (Q, k); id -1 where the index found fewer than k."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        quantize = self.info.get("quantize")
        if quantize is None:
            return self.index.search(queries, k)
        pool = min(k * self.info["search"]["rescore"], self.index.ntotal)
        _, candidates = self.index.search(compressed.codes(quantize, queries), pool)  # (Q, pool)
        return compressed.rescore(lambda ids: self.folder.take(self.modality, ids), queries, candidates, k)


def load_index(folder: EmbeddingFolder, modality: str, path: str | Path | None = None) -> LoadedIndex | None:
    """The index built for this modality of the folder (None when there is none); refuses an index built
    for a different set of parts."""
    path = Path(path) if path is not None else default_index_path(folder, modality)
    if not path.is_file():
        return None
    faiss = _faiss()
    info_path = _info_path(path)
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EmbeddingFolderError(f"index {str(path)!r} has no readable description {str(info_path)!r}: {e}") from e
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("modality") != modality:
        raise EmbeddingFolderError(f"{str(info_path)!r} does not describe a {modality} index written by align_torch")
    _check_info(info, info_path)
    if info["index_bytes"] != path.stat().st_size:
        raise EmbeddingFolderError(f"{str(path)!r} does not match its description {str(info_path)!r}; rebuild it")
    if [tuple(p) for p in info["layout"]] != folder.layout(modality):
        raise EmbeddingFolderError(
            f"index {str(path)!r} was built for other {modality} parts than the folder holds now; rebuild it with "
            f"`align-torch index {folder.root}`"
        )
    if info["count"] != folder.count(modality) or info["dim"] != folder.dim(modality):
        raise EmbeddingFolderError(
            f"{str(info_path)!r} is damaged: count {info['count']} and dim {info['dim']} are not the folder's "
            f"{folder.count(modality)} and {folder.dim(modality)}; rebuild the index"
        )
    binary = info.get("quantize") == "binary"
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if info["kind"].startswith("ivf") else 0
    try:
        index = faiss.read_index_binary(str(path)) if binary else faiss.read_index(str(path), flags)
        if "nprobe" in info["search"]:
            faiss.extract_index_ivf(index).nprobe = info["search"]["nprobe"]
        if "efSearch" in info["search"]:
            index.hnsw.efSearch = info["search"]["efSearch"]
    except (RuntimeError, AttributeError, TypeError) as e:  # FAISS's own error for a damaged or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EmbeddingFolderError(
            f"index {str(path)!r} is damaged or does not match {str(info_path)!r} ({first}); rebuild it with "
            f"`align-torch index {folder.root}`"
        ) from None
    if index.ntotal != info["count"] or index.d != info["dim"]:
        raise EmbeddingFolderError(
            f"index {str(path)!r} holds {index.ntotal} vectors of {index.d} dims where {str(info_path)!r} says "
            f"{info['count']} of {info['dim']}; rebuild it"
        )
    return LoadedIndex(index, info, folder, modality)
