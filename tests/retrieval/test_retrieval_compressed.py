"""`align-torch index --quantize int8|binary`: compressed flat indexes whose candidates are rescored from the float
vectors on disk, against exact search on 200,000 clustered vectors; `search` uses them unchanged."""

from __future__ import annotations

import os

import numpy as np
import pytest

from align_torch.retrieval import index as ix
from align_torch.retrieval.collection import Collection, exact_top_k
from align_torch.retrieval.folder import EmbeddingFolder
from tests.helpers.retrieval_data import clustered, normalise, write_folder

faiss = pytest.importorskip("faiss")

COUNT, DIM = 200_000, 640
GOAL = {"int8": 0.99, "binary": 0.95}


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """200,000 x 640 float16 clustered vectors (as the IVF-PQ test) and 200 noisy database vectors as queries,
    with their exact top 10."""
    root = tmp_path_factory.mktemp("compressed") / "big"
    (root / "img_emb").mkdir(parents=True)
    for i, chunk in enumerate(clustered(COUNT, DIM, clusters=1_000, spread=0.8, seed=0, chunk=25_000)):
        np.save(root / "img_emb" / f"img_emb_{i}.npy", chunk.astype(np.float16))
    folder = EmbeddingFolder(root)
    rng = np.random.default_rng(1)
    ids = np.sort(rng.choice(COUNT, 200, replace=False))
    noise = normalise(rng.standard_normal((len(ids), DIM))) * 0.1
    queries = normalise(folder.take("image", ids) + noise).astype(np.float32)
    _, exact = exact_top_k(folder.chunks("image"), queries, 10)  # (Q, 10)
    return root, queries, exact


@pytest.mark.parametrize("quantize", ["int8", "binary"])
def test_compressed_index_recall_at_10_against_exact_search(big, quantize, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root, queries, exact = big
    out = root / "index" / f"{quantize}.index"
    built = ix.build_index(root, quantize=quantize, max_memory="1GB", out=out)
    folder = EmbeddingFolder(root)
    loaded = ix.load_index(folder, "image", out)
    assert loaded.info["quantize"] == quantize and loaded.info["search"]["rescore"] >= 1
    scores, found = loaded.search(queries, 10)
    recall = float(np.mean([len(set(e) & set(f)) / 10 for e, f in zip(exact, found, strict=True)]))
    per_million = ix.memory_per_million(DIM)[f"{quantize} + rescore"]
    print(
        f"\n{quantize} + rescore: recall@10 {recall:.4f} vs exact; index {os.path.getsize(out) / 2**20:.1f} MiB for "
        f"{COUNT:,} x {DIM}; {per_million / 2**20:.1f} MiB per million vectors; build {built.seconds:.1f} s"
    )
    assert recall >= GOAL[quantize]
    # Rescored scores are the exact inner products with the float vectors, best first.
    np.testing.assert_allclose(scores[:, 0], np.sum(folder.take("image", found[:, 0]) * queries, axis=1), rtol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert os.path.getsize(out) < COUNT * DIM * (1.01 if quantize == "int8" else 1.01 / 8)


def test_search_command_uses_a_compressed_index_and_refuses_mixed_options(tmp_path, capsys):
    from align_torch.cli import main

    rng = np.random.default_rng(0)
    vectors = normalise(rng.standard_normal((300, 16))).astype(np.float32)
    root = write_folder(tmp_path / "c", [vectors], dtype="float32")
    assert main(["index", str(root), "--quantize", "binary"]) == 0
    err = capsys.readouterr().err
    assert "MB per million vectors" in err
    folder = EmbeddingFolder(root)
    loaded = ix.load_index(folder, "image")
    assert loaded.info["quantize"] == "binary"
    _, found = loaded.search(vectors[:5], 3)
    assert list(found[:, 0]) == [0, 1, 2, 3, 4]  # each vector finds itself first after rescoring
    # search goes through the index unchanged: each query finds itself, every score is the exact cosine
    hits = Collection(root).search_vectors(vectors[:5], k=3)
    assert [row[0].id for row in hits] == [0, 1, 2, 3, 4]
    for q, row in enumerate(hits):
        for hit in row:
            assert hit.score == pytest.approx(float(vectors[hit.id] @ vectors[q]), abs=1e-5)
    assert main(["index", str(root), "--quantize", "int8", "--kind", "hnsw"]) == 2
    assert "leave out --kind hnsw" in capsys.readouterr().err
    with pytest.raises(ValueError, match="multiple of 8"):
        ix.plan_index(100, 12, 2**30, quantize="binary")
