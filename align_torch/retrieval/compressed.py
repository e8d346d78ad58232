"""Compressed flat indexes: int8 (FAISS's 8-bit scalar quantizer, 4x smaller than float32) and binary (one sign bit
per component in a Hamming index, 32x smaller), each searched for more candidates than asked and rescored
exactly against the float vectors on disk, as sentence-transformers' embedding quantization does.

Only FAISS and numpy here; index.py plans, writes and loads these indexes beside the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTIZE = ("int8", "binary")
FACTORY = {"int8": "SQ8", "binary": "BFlat"}
# Candidates searched per hit asked for, then rescored from the float vectors. On 200,000 clustered 640-d vectors
# (tests/test_retrieval_compressed.py) recall@10 against exact search was, by candidates per hit 1/2/4/10/20:
# int8 0.970/1.000/1.000/1.000/1.000, binary 0.286/0.406/0.591/0.877/0.9995. Binary codes rank coarsely.
RESCORE = {"int8": 4, "binary": 20}
SQ_TRAIN_ROWS = 65_536  # the 8-bit quantizer learns each component's range from a sample


def compressed_bytes(quantize: str, count: int, dim: int) -> int:
    """Memory of a compressed index of `count` vectors of `dim` components."""
    if quantize == "int8":
        return count * dim + 2 * dim * 4  # one byte per component, plus each component's range (min, step)
    if quantize == "binary":
        return count * (dim // 8)
    raise ValueError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")


def check_dim(quantize: str, dim: int) -> None:
    if quantize == "binary" and dim % 8:
        raise ValueError(
            f"--quantize binary packs 8 components per byte; these vectors have {dim}, not a multiple of 8"
        )


def new_index(faiss: Any, quantize: str, dim: int) -> Any:
    """An empty inner-product int8 index or a Hamming binary index."""
    if quantize == "int8":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexBinaryFlat(dim)


def codes(quantize: str, vectors: np.ndarray) -> np.ndarray:
    """What the index stores for (n, D) float32 vectors: the vectors (int8 quantizes inside FAISS) or their
    packed sign bits (n, D / 8) uint8."""
    if quantize == "binary":
        return np.packbits(vectors > 0, axis=1)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def rescore(float_rows: Any, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidate ids, best k first: (scores, ids), each (Q, k).

    `float_rows(ids)` returns the (n, D) float32 rows of those ids. Id -1 (fewer candidates than asked) stays
    out; rows with fewer than k real candidates end in (-inf, -1).
    """
    Q = len(queries)
    scores = np.full((Q, k), -np.inf, np.float32)
    ids = np.full((Q, k), -1, np.int64)
    for q in range(Q):
        found = candidates[q][candidates[q] >= 0]  # (c,)
        if not found.size:
            continue
        exact = float_rows(found) @ queries[q]  # (c,)
        best = np.argsort(-exact, kind="stable")[:k]
        scores[q, : len(best)] = exact[best]
        ids[q, : len(best)] = found[best]
    return scores, ids
