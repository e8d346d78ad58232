"""The embeddings-folder reader and exact search over it, on folders written with numpy and pyarrow alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from align_torch.retrieval.collection import Collection, exact_top_k
from align_torch.retrieval.folder import EmbeddingFolder, EmbeddingFolderError
from tests.helpers.retrieval_data import normalise, write_folder


def parts_of(rng, sizes, dim=16):
    return [normalise(rng.standard_normal((n, dim))).astype(np.float32) for n in sizes]


def test_parts_are_read_in_numeric_order_in_chunks_across_part_boundaries(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [5, 7, 3, 6, 2, 4, 5, 1, 3, 2, 6, 4]  # 12 parts: img_emb_10 and _11 sort after _9
    parts = parts_of(rng, sizes)
    root = write_folder(tmp_path / "c", parts, dtype="float16")
    (root / "img_emb" / ".img_emb_12.npy.tmp-x").write_bytes(b"a temporary left by a crash")
    folder = EmbeddingFolder(root)
    assert folder.modalities == ["image"] and folder.count("image") == sum(sizes) and folder.dim("image") == 16
    assert folder.model is None  # clip-retrieval's own output: no description
    expected = np.concatenate(parts).astype(np.float16).astype(np.float32)
    chunks = list(folder.chunks("image", rows=4))
    assert [start for start, _ in chunks][:3] == [0, 4, 5]  # a chunk never spans two parts
    assert max(len(c) for _, c in chunks) == 4
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), expected)
    ids = [40, 0, 47, 5, 11]
    np.testing.assert_array_equal(folder.take("image", ids), expected[ids])
    np.testing.assert_array_equal(folder.part_array("image", 10), parts[10].astype(np.float16))
    with pytest.raises(IndexError):
        folder.take("image", [sum(sizes)])


def test_metadata_rows_follow_the_ids_and_the_description_is_read(tmp_path):
    rng = np.random.default_rng(1)
    parts = parts_of(rng, [3, 4])
    metadata = [
        {
            "image_path": [f"p0_{i}.jpg" for i in range(3)],
            "caption": [f"c0_{i}" for i in range(3)],
            "key": ["a", "b", "c"],
        },
        {
            "image_path": [f"p1_{i}.jpg" for i in range(4)],
            "caption": [f"c1_{i}" for i in range(4)],
            "key": list("defg"),
        },
    ]
    root = write_folder(tmp_path / "c", parts, metadata=metadata, text_parts=parts_of(rng, [3, 4]))
    (root / "embeddings.json").write_text(json.dumps({"model": "some/model", "dim": 16}))
    folder = EmbeddingFolder(root)
    assert folder.modalities == ["image", "text"] and folder.model == "some/model"
    assert folder.metadata([4, 0]) == [
        {"image_path": "p1_1.jpg", "caption": "c1_1", "key": "e"},
        {"image_path": "p0_0.jpg", "caption": "c0_0", "key": "a"},
    ]


def test_only_finished_partitions_of_an_align_torch_folder_are_read(tmp_path):
    """embed writes a partition's files, then its done/ marker: a part without one is from an unfinished run."""
    rng = np.random.default_rng(5)
    parts = parts_of(rng, [3, 4, 2])
    meta = [{"image_path": [f"{i}_{r}" for r in range(len(p))]} for i, p in enumerate(parts)]
    root = write_folder(tmp_path / "c", parts, metadata=meta)
    (root / "embeddings.json").write_text(json.dumps({"format": "align_torch.embeddings_folder", "model": "m"}))
    (root / "done").mkdir()
    for n in (0, 2):
        (root / "done" / f"done_{n}.json").write_text("{}")
    np.save(root / "img_emb" / "img_emb_1.npy", parts_of(rng, [7])[0])  # an interrupted rewrite: rows differ
    folder = EmbeddingFolder(root)
    assert folder.layout("image") == [(0, 3), (2, 2)]
    assert folder.metadata([3, 4]) == [{"image_path": "2_0"}, {"image_path": "2_1"}]
    np.testing.assert_array_equal(folder.take("image", [3]), parts[2][:1].astype(np.float16).astype(np.float32))
    (root / "done" / "done_0.json").unlink()
    (root / "done" / "done_2.json").unlink()
    with pytest.raises(EmbeddingFolderError, match="has no finished"):
        EmbeddingFolder(root)


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("metadata_rows", "has 2 rows but its embeddings part has 3"),
        ("text_rows", "text parts do not line up"),
        ("metadata_missing", "do not match the embedding parts"),
        ("widths", "different widths"),
        ("not_npy", "is not a readable .npy file"),
        ("empty", "has no finished img_emb/img_emb_N.npy"),
    ],
)
def test_a_broken_folder_is_refused_with_the_problem_named(tmp_path, breakage, message):
    rng = np.random.default_rng(2)
    meta = [{"image_path": ["a", "b", "c"]}, {"image_path": ["d", "e"]}]
    root = write_folder(tmp_path / "c", parts_of(rng, [3, 2]), metadata=meta, text_parts=parts_of(rng, [3, 2]))
    if breakage == "metadata_rows":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"image_path": ["a", "b"]}), root / "metadata" / "metadata_0.parquet")
    elif breakage == "text_rows":
        np.save(root / "text_emb" / "text_emb_1.npy", parts_of(rng, [4])[0])
    elif breakage == "metadata_missing":
        (root / "metadata" / "metadata_1.parquet").unlink()
    elif breakage == "widths":
        np.save(root / "img_emb" / "img_emb_1.npy", parts_of(rng, [2], dim=8)[0])
    elif breakage == "not_npy":
        (root / "img_emb" / "img_emb_1.npy").write_bytes(b"not an npy file")
    else:
        root = tmp_path / "empty"
        root.mkdir()
    with pytest.raises(EmbeddingFolderError, match=message):
        EmbeddingFolder(root)


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every score at once, ordered by score then id (a stable sort of the negated scores)."""
    scores = queries @ vectors.T  # (Q, N)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def test_exact_search_over_a_folder_equals_brute_force_including_ties(tmp_path):
    rng = np.random.default_rng(3)
    parts = parts_of(rng, [50, 37, 64, 1, 48], dim=32)
    parts[2][10] = parts[0][7]  # duplicates in other parts and chunks: exact ties, lower id first
    parts[4][0] = parts[0][7]
    parts[1][3] = parts[0][7]
    root = write_folder(tmp_path / "c", parts, dtype="float32")
    everything = np.concatenate(parts)
    queries = normalise(np.concatenate([everything[[7, 120]], rng.standard_normal((6, 32))])).astype(np.float32)
    folder = EmbeddingFolder(root)
    for k in (1, 5, 25, 200, 300):
        scores, ids = exact_top_k(folder.chunks("image", rows=16), queries, k)
        want_scores, want_ids = brute_force(everything, queries, min(k, len(everything)))
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)
    hits = Collection(root).search_vectors(queries[0], k=4)[0]
    assert [h.id for h in hits] == [7, 53, 97, 152] and [h.rank for h in hits] == [1, 2, 3, 4]
    assert hits[0].score == pytest.approx(1.0, abs=1e-6) and hits[3].score == hits[0].score


def test_search_vectors_checks_k_target_and_dimensions(tmp_path):
    rng = np.random.default_rng(4)
    collection = Collection(write_folder(tmp_path / "c", parts_of(rng, [4])))
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be an integer"):
            collection.search_vectors(np.ones(16), k=bad_k)
    with pytest.raises(ValueError, match="has no text embeddings"):
        collection.search_vectors(np.ones(16), target="text")
    with pytest.raises(ValueError, match="query embedding has 8 dimensions but the image embeddings"):
        collection.search_vectors(np.ones(8))
    with pytest.raises(ValueError, match="does not record the model"):
        collection.search(text="a cat")
