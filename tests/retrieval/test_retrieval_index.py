"""FAISS indexes over an embeddings folder: the kind `auto` chooses, the build under a memory budget, recall."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers.retrieval_data import clustered, normalise, write_folder

faiss = pytest.importorskip("faiss")

from align_torch.retrieval import index as ix  # noqa: E402
from align_torch.retrieval.collection import Collection, exact_top_k  # noqa: E402
from align_torch.retrieval.folder import EmbeddingFolder, EmbeddingFolderError, unit_rows  # noqa: E402

GiB, MiB = 2**30, 2**20


@pytest.mark.parametrize(
    "count, dim, budget, kind",
    [
        (500, 640, 4 * GiB, "flat"),
        (5_000, 640, 4 * GiB, "hnsw"),
        (200_000, 640, 4 * GiB, "hnsw"),
        (900_000, 640, 2_350_000_000, "ivf-flat"),
        (200_000, 640, 256 * MiB, "ivf-pq"),
        (2_000_000, 640, 4 * GiB, "ivf-pq"),
        (50_000_000, 512, 16 * GiB, "ivf-pq"),
    ],
)
def test_auto_chooses_the_kind_autofaiss_chooses(count, dim, budget, kind):
    plan = ix.plan_index(count, dim, budget, "auto")
    assert plan.kind == kind
    assert plan.index_bytes + plan.train_rows * dim * 4 <= budget
    try:
        from autofaiss.external.optimize import get_optimal_index_keys_v2
    except ImportError:
        return  # autofaiss pins numpy<2, pandas<3: usually not installable beside align_torch
    key = get_optimal_index_keys_v2(count, dim, f"{budget}B")[0]
    family = (
        "flat"
        if key == "Flat"
        else "hnsw"
        if key.startswith("HNSW")
        else "ivf-flat"
        if key.endswith(",Flat")
        else "ivf-pq"
    )
    assert family == kind, key


def test_plans_fit_their_budget_and_refuse_what_cannot_fit():
    plan = ix.plan_index(200_000, 640, 64 * MiB, "auto")
    assert (plan.kind, plan.factory, plan.search) == ("ivf-pq", "IVF256,PQ32np", {"nprobe": 16})
    assert plan.train_rows >= 39 * 256 and plan.pq_train_rows >= 39 * 256
    working = max(
        plan.train_rows * 640 * 4 + ix.KMEANS_BUFFER,
        plan.pq_train_rows * 2 * 640 * 4,
        plan.chunk_rows * (2 * 640 * 4 + 32 * 256 * 4),
    )
    assert plan.index_bytes + working <= 64 * MiB
    assert ix.plan_index(200_000, 640, 4 * GiB, "auto").factory == "HNSW32"
    assert ix.plan_index(200_000, 640, 4 * GiB, "ivf-pq").factory == "IVF2048,PQ32np"  # autofaiss's list count
    with pytest.raises(ValueError, match="does not fit in --max-memory 40MB"):
        ix.plan_index(200_000, 640, 40 * MiB, "auto")
    with pytest.raises(ValueError, match="does not fit"):
        ix.plan_index(200_000, 640, 256 * MiB, "flat")
    with pytest.raises(ValueError, match="--kind must be one of"):
        ix.plan_index(10, 4, GiB, "lsh")
    assert (
        ix.parse_memory("4GB") == 4 * GiB
        and ix.parse_memory("512M") == 512 * MiB
        and ix.parse_memory("1.5GiB") == 1.5 * GiB
    )
    for bad in ("lots", "-1GB", "0"):
        with pytest.raises(ValueError, match="--max-memory"):
            ix.parse_memory(bad)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf-flat", "ivf-pq"])
def test_every_kind_builds_and_finds_the_database_vectors(kind, tmp_path):
    parts = [np.concatenate(list(clustered(n, 64, 20, 0.6, seed=i))) for i, n in enumerate([6_000, 5_000, 4_500])]
    folder = EmbeddingFolder(write_folder(tmp_path / "c", parts))
    built = ix.build_index(folder, kind=kind, max_memory="64MB")
    assert built.path == tmp_path / "c" / "index" / "image.index" and built.plan.kind == kind
    info = json.loads(built.info_path.read_text())
    assert info["count"] == 15_500 and info["layout"] == [[0, 6_000], [1, 5_000], [2, 4_500]]
    loaded = ix.load_index(folder, "image")
    assert loaded.index.ntotal == 15_500
    ids = np.arange(0, 15_500, 97)
    queries = folder.take("image", ids)
    _, found = loaded.search(queries, 10)
    recall = np.mean([i in row for i, row in zip(ids, found, strict=True)])
    assert recall >= (1.0 if kind in ("flat", "ivf-flat") else 0.95), recall
    if kind == "flat":
        # the index holds the rows divided by their length (float16 rows are unit only to ~1e-4): cosines
        want_scores, want_ids = exact_top_k(((s, unit_rows(c)) for s, c in folder.chunks("image")), queries, 10)
        scores, got = loaded.search(queries, 10)
        np.testing.assert_array_equal(got[:, 0], want_ids[:, 0])
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_an_index_of_other_parts_is_refused_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    root = write_folder(tmp_path / "c", [normalise(rng.standard_normal((300, 8)))] * 2)
    built = ix.build_index(root, kind="flat")
    before = built.path.read_bytes()

    def crash(index, path):
        with open(path, "wb") as f:
            f.write(b"half an index")
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        ix.build_index(root, kind="flat")
    monkeypatch.undo()
    assert built.path.read_bytes() == before
    assert sorted(p.name for p in built.path.parent.iterdir()) == ["image.index", "image.index.json"]
    np.save(root / "img_emb" / "img_emb_2.npy", normalise(rng.standard_normal((5, 8))).astype(np.float16))
    with pytest.raises(EmbeddingFolderError, match="built for other image parts"):
        Collection(root).search_vectors(np.ones(8), k=3)
    assert len(Collection(root, use_index=False).search_vectors(np.ones(8), k=3)[0]) == 3


BUILD = """
import json, sys
import faiss, pyarrow.parquet  # loaded before the baseline: the libraries are not the build's memory
from align_torch.retrieval.index import build_index

def peak_rss():  # VmHWM: this process's own peak (ru_maxrss can carry the forking parent's peak over exec)
    status = open("/proc/self/status").read().split("VmHWM:")[1]
    return int(status.split()[0]) * 1024

before = peak_rss()
built = build_index(sys.argv[1], kind="auto", max_memory=sys.argv[2])
print(json.dumps({"factory": built.plan.factory, "seconds": built.seconds, "rss_before": before, "peak_rss": peak_rss(),
                  "modules": sorted(m for m in sys.modules if m == "torch")}))
"""


def test_auto_ivf_pq_on_200k_vectors_finds_the_nearest_neighbour_within_a_small_memory_budget(tmp_path):
    """200,000 x 640 float16 vectors (250 MiB; 500 MiB as float32) indexed with --max-memory 64MB: the process's
    peak RSS stays far below the vectors' size, and the nearest neighbour of a noisy database vector is in the
    top 10 for >= 95% of queries at the default nprobe."""
    count, dim, budget = 200_000, 640, "64MB"
    began = time.perf_counter()
    root = tmp_path / "big"
    (root / "img_emb").mkdir(parents=True)
    for i, chunk in enumerate(clustered(count, dim, clusters=1_000, spread=0.8, seed=0, chunk=25_000)):
        np.save(root / "img_emb" / f"img_emb_{i}.npy", chunk.astype(np.float16))
    vector_bytes = count * dim * 2
    # one OpenMP thread: on an oversubscribed machine FAISS's spinning threads burn ten times the CPU time
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", BUILD, str(root), budget], capture_output=True, text=True, check=True, env=env
    )
    report = json.loads(out.stdout.splitlines()[-1])
    folder = EmbeddingFolder(root)
    rng = np.random.default_rng(1)
    ids = np.sort(rng.choice(count, 200, replace=False))
    noise = normalise(rng.standard_normal((len(ids), dim))) * 0.1
    queries = normalise(folder.take("image", ids) + noise).astype(np.float32)
    _, nearest = exact_top_k(folder.chunks("image"), queries, 1)  # (Q, 1) the exact nearest neighbours
    loaded = ix.load_index(folder, "image")
    assert faiss.extract_index_ivf(loaded.index).nprobe == loaded.info["search"]["nprobe"] == 16  # the default
    _, found = loaded.search(queries, 10)
    recall_at_10 = float(np.mean([n in row for n, row in zip(nearest[:, 0], found, strict=True)]))
    recall_at_1 = float(np.mean(found[:, 0] == nearest[:, 0]))
    peak = report["peak_rss"]
    print(
        f"\n{report['factory']}: recall@10 {recall_at_10:.3f}, recall@1 {recall_at_1:.3f}; build {report['seconds']:.1f} s; "
        f"peak RSS {peak / MiB:.0f} MiB (after imports {report['rss_before'] / MiB:.0f} MiB) for "
        f"{vector_bytes / MiB:.0f} MiB of float16 vectors; whole test {time.perf_counter() - began:.0f} s"
    )
    assert report["factory"].startswith("IVF") and ",PQ" in report["factory"]
    assert "torch" not in report["modules"]
    assert recall_at_10 >= 0.95
    assert peak - report["rss_before"] < 1.5 * 64 * MiB  # the build's own memory: the budget plus allocator slack
    assert peak < vector_bytes


def test_without_faiss_index_and_search_say_how_to_go_on(tmp_path, monkeypatch, capsys):
    from align_torch.cli import main

    root = write_folder(tmp_path / "c", [normalise(np.random.default_rng(0).standard_normal((50, 8)))])
    ix.build_index(root, kind="flat")
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    assert main(["index", str(root), "--kind", "flat"]) == 2
    assert 'pip install faiss-cpu (or pip install -e ".[index]" in the clone)' in capsys.readouterr().err
    with pytest.raises(ValueError, match="search exactly with --exact"):
        Collection(root).search_vectors(np.ones(8), k=1)
    assert len(Collection(root, use_index=False).search_vectors(np.ones(8), k=2)[0]) == 2
