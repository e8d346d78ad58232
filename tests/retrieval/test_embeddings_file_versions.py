"""Every embeddings file align_torch has written still loads and searches: each earlier (format, version) layout is
written here as its writer wrote it (git history of retrieval/embeddings_file.py, formerly embedding_index.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from align_torch.inference.loader import load_for_inference
from align_torch.retrieval.embeddings_file import FORMAT, VERSION, EmbeddingIndex, EmbeddingsFileError
from tests.helpers.cli import run_cli

TEXTS = ["a photo of a cat", "a cup of coffee on a table", "an astronaut", "a red rocket on the launch pad"]
# (format, version) as each earlier writer stored them
EARLIER = [
    ("align_torch.embeddings", "1"),  # the first: image paths stored as they are
    ("align_torch.embeddings", "2"),  # paths through fileio.path_to_text
    ("align_torch.inference.embed", "2"),  # the name it had while the format's home was inference/embed.py
]


def _write_earlier(path, format_name: str, version: str, kind: str, items: list[str], vectors, model: str) -> None:
    """The file as the earlier writer made it: no model_class, its own format string and version."""
    metadata = {
        "format": format_name,
        "version": version,
        "kind": kind,
        "model": model,
        "items": json.dumps(items, ensure_ascii=False),
        "skipped": json.dumps([]),
    }
    save_file({"embeddings": vectors.float().contiguous()}, str(path), metadata=metadata)


@pytest.mark.parametrize(("format_name", "version"), EARLIER)
def test_earlier_text_files_load_and_search(tmp_path, model_dir, format_name, version):
    model, processor = load_for_inference(model_dir, "cpu")
    from align_torch.inference.embed import embed_texts

    path = tmp_path / "old.safetensors"
    _write_earlier(
        path, format_name, version, "text", TEXTS, embed_texts(model, processor.tokenizer, TEXTS), str(model_dir)
    )
    index = EmbeddingIndex.load(path)
    assert index.items == TEXTS and index.kind == "text" and index.model_class is None
    for text in TEXTS:
        status, stdout, stderr = run_cli("search", path, text, "-k", "1", "--json", "--device", "cpu")
        assert status == 0, stderr
        hit = json.loads(stdout)["results"][0]
        assert hit["item"] == text and hit["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("format_name", "version"), EARLIER)
def test_earlier_image_paths_read_as_written(tmp_path, format_name, version):
    """Version 1 stored names as they are, so one starting with "file:" is a name; version 2 on decodes it."""
    items = ["photos/cat.png", "file:odd%2Dname.png"]
    path = tmp_path / "old.safetensors"
    _write_earlier(path, format_name, version, "image", items, torch.eye(2), "m")
    expected = items if version == "1" else ["photos/cat.png", "odd-name.png"]
    assert EmbeddingIndex.load(path).items == expected
    assert EmbeddingIndex.load(path).search(torch.tensor([0.0, 1.0]), k=1)[0].item == expected[1]


def test_new_files_have_one_stable_name_and_an_unknown_version_is_refused(tmp_path):
    assert (FORMAT, VERSION) == ("align_torch.embeddings", "3")
    path = tmp_path / "new.safetensors"
    EmbeddingIndex(torch.eye(2), ["a", "b"], "text", "m").save(path)
    assert EmbeddingIndex.load(path).items == ["a", "b"]
    _write_earlier(path, "align_torch.embeddings", "4", "text", ["a", "b"], torch.eye(2), "m")
    with pytest.raises(EmbeddingsFileError, match="version '4'; this align_torch reads versions '1', '2', '3'"):
        EmbeddingIndex.load(path)
