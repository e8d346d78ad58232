"""Numbers checked where they enter retrieval: queries, index descriptions, the kinds' training sizes, empty
files, unreadable collections, and what the commands say about them. Each test is named after its input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from tests.helpers.cli import run_cli
from tests.helpers.retrieval_data import normalise, write_folder


def random_folder(root: Path, rows: int, dim: int = 64) -> Path:
    return write_folder(root, [normalise(np.random.default_rng(0).normal(size=(rows, dim)))])


def usage_error(status: int, err: str, *words: str) -> None:
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


def test_search_refuses_non_finite_query(tmp_path):
    from align_torch.retrieval.collection import Collection

    collection = Collection(random_folder(tmp_path / "emb", 10))
    queries = normalise(np.random.default_rng(1).normal(size=(3, 64)))
    queries[1, 5] = np.nan
    with pytest.raises(ValueError, match="query 1 holds NaN or infinity"):
        collection.search_vectors(queries, k=3)
    queries[1, 5], queries[2, 0] = 0.0, np.inf
    with pytest.raises(ValueError, match="query 2 holds NaN or infinity"):
        collection.search_vectors(queries, k=3)


def test_search_refuses_efsearch_10_to_the_12_in_image_index_json(tmp_path, model_dir):
    pytest.importorskip("faiss")
    folder = random_folder(tmp_path / "emb", 10)
    status, _, err = run_cli("index", folder, "--kind", "hnsw")
    assert status == 0, err
    described = folder / "index" / "image.index.json"
    info = json.loads(described.read_text())
    info["search"]["efSearch"] = 10**12
    described.write_text(json.dumps(info))
    from align_torch.retrieval.collection import Collection

    with pytest.raises(ValueError, match=r"image\.index\.json.*efSearch") as refused:
        Collection(folder).search_vectors(normalise(np.ones((1, 64))), k=3)
    assert "10**12" not in str(refused.value) and "1048576" in str(refused.value)


def test_search_refuses_an_embeddings_file_of_0_rows(tmp_path, model_dir):
    from align_torch.retrieval.embeddings_file import EmbeddingIndex

    empty = tmp_path / "empty.safetensors"
    EmbeddingIndex(vectors=torch.zeros(0, 80), items=[], kind="image", model=str(model_dir)).save(empty)
    status, stdout, err = run_cli("search", empty, "a cat")
    usage_error(status, err, "empty.safetensors", "holds 0 image embeddings")
    assert stdout == ""


def test_index_refuses_ivf_pq_on_7_vectors(tmp_path):
    folder = random_folder(tmp_path / "emb", 7)
    status, stdout, err = run_cli("index", folder, "--kind", "ivf-pq")
    usage_error(status, err, "--kind ivf-pq", "at least 256 vectors", "has 7")
    assert not (folder / "index").exists()


def test_index_says_an_int8_and_an_ivf_pq(tmp_path):
    pytest.importorskip("faiss")
    folder = random_folder(tmp_path / "emb", 300)
    status, _, err = run_cli("index", folder, "--quantize", "int8")
    assert status == 0 and "building an int8 index" in err, err
    status, _, err = run_cli("index", folder, "--kind", "ivf-pq", "--max-memory", "1KB")
    assert status == 2 and "an ivf-pq index of 300 vectors" in err, err


def test_embeddings_file_stores_absolute_paths_as_the_folder_does(tmp_path, model_dir, monkeypatch):
    from align_torch.retrieval.embeddings_file import EmbeddingIndex

    (tmp_path / "photos").mkdir()
    for name, colour in (("red.png", (220, 30, 30)), ("blue.png", (20, 40, 230))):
        PIL.Image.new("RGB", (64, 48), colour).save(tmp_path / "photos" / name)
    (tmp_path / "photos" / "broken.png").write_bytes(b"not an image")
    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli("embed", "photos", "--out", "e.safetensors", "--model", model_dir, "--workers", "0")
    assert status == 0, err
    stored = EmbeddingIndex.load(tmp_path / "e.safetensors")
    assert stored.items == [str(tmp_path / "photos" / n) for n in ("blue.png", "red.png")]
    assert [s["item"] for s in stored.skipped] == [str(tmp_path / "photos" / "broken.png")]


def test_embed_manifest_whose_images_are_all_unreadable_exits_1(tmp_path, model_dir):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "b.jpg").write_bytes(b"")
    (tmp_path / "pairs.csv").write_text("image,caption\na.jpg,a cat\nb.jpg,a dog\n")
    status, _, err = run_cli(
        "embed", tmp_path / "pairs.csv", "--out", tmp_path / "emb", "--model", model_dir, "--workers", "0", "--quiet"
    )
    assert status == 1, err
    assert "none of the 2 images could be read" in err.strip().splitlines()[-1]


def test_embed_status_gives_the_partition_sizes_3_3_1(tmp_path, model_dir):
    (tmp_path / "photos").mkdir()
    for i in range(7):
        PIL.Image.new("RGB", (40, 40), (30 * i, 20, 200 - 20 * i)).save(tmp_path / "photos" / f"{i}.png")
    emb = tmp_path / "emb"
    args = ("--model", model_dir, "--workers", "0", "--quiet", "--partition-size", "3")
    status, _, err = run_cli("embed", tmp_path / "photos", "--out", emb, *args)
    assert status == 0, err
    status, stdout, _ = run_cli("embed", "--status", emb)
    assert status == 0 and "3/3 partitions finished (3 images each, the last 1)" in stdout, stdout
    assert os.path.isabs(stdout.split("model ", 1)[1].split(",")[0])
