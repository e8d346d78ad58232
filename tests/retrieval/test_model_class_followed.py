"""The model class that made embeddings (`--model-class`) is recorded in the file or folder and followed: search
embeds its queries as that class without the flag being repeated, and a resume or search with another class is
refused with both named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align_torch.retrieval.embeddings_file import EmbeddingIndex
from align_torch.retrieval.layout import FolderInfo
from tests.helpers.cli import run_cli
from tests.helpers.job_data import photo

VARIANT = "tests.helpers.variants:CustomBlock"  # image block 1 without squeeze-excite: other image embeddings
TEXT_VARIANT = "tests.helpers.variants:FlippedText"  # the text embedding's coordinates reversed
OTHER = "tests.helpers.variants:PreLN"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("class_photos")
    paths = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        paths.append(folder / f"{name}.png")
        photo(name).resize((96, 72)).save(paths[-1])
    return paths


def _self_score(out: Path, query: Path, *extra) -> tuple[str, float]:
    status, stdout, stderr = run_cli("search", out, "--image", query, "-k", "1", "--json", "--device", "cpu", *extra)
    assert status == 0, stderr
    hit = json.loads(stdout)["results"][0]
    return hit["item"], hit["score"]


def test_variant_embedded_into_a_file_is_searched_with_it(tmp_path, model_dir, photos):
    out = tmp_path / "emb.safetensors"
    common = ["--model", model_dir, "--device", "cpu", "--quiet"]
    status, _, stderr = run_cli("embed", *photos, "--out", out, *common, "--model-class", VARIANT)
    assert status == 0, stderr
    record = EmbeddingIndex.load(out).model_class
    assert record["class"] == VARIANT and record["source"].startswith("sha256:")
    for query in photos:  # without --model-class: the recorded class embeds the query, so it finds itself at 1.0
        item, score = _self_score(out, query)
        assert item == str(query) and score == pytest.approx(1.0, abs=1e-5)
    status, _, stderr = run_cli("search", out, "--image", photos[0], "--device", "cpu", "--model-class", OTHER)
    assert status == 2 and VARIANT in stderr and OTHER in stderr


def test_text_variant_embedded_with_embed_text_is_searched_with_it(tmp_path, model_dir):
    texts = ["a photo of a cat", "a cup of coffee on a table", "an astronaut", "a red rocket on the launch pad"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "texts.safetensors"
    argv = ["embed-text", tmp_path / "texts.txt", "--out", out, "--model", model_dir, "--device", "cpu", "--quiet"]
    status, _, stderr = run_cli(*argv, "--model-class", TEXT_VARIANT)
    assert status == 0, stderr
    for text in texts:
        status, stdout, stderr = run_cli("search", out, text, "-k", "1", "--json", "--device", "cpu")
        assert status == 0, stderr
        hit = json.loads(stdout)["results"][0]
        assert hit["item"] == text and hit["score"] == pytest.approx(1.0, abs=1e-5)


def test_variant_folder_is_searched_with_it_and_a_resume_with_another_class_is_refused(tmp_path, model_dir, photos):
    out = tmp_path / "folder"
    common = ["--model", model_dir, "--device", "cpu", "--quiet", "--workers", "0", "--partition-size", "2"]
    status, _, stderr = run_cli("embed", *photos, "--out", out, *common, "--model-class", VARIANT)
    assert status == 0, stderr
    assert FolderInfo.load(out).model_class["class"] == VARIANT
    item, score = _self_score(out, photos[1])
    assert item == str(photos[1].resolve()) and score == pytest.approx(1.0, abs=2e-3)  # float16 rows
    # A rerun that finishes the folder follows the recorded class; another class is refused, both named.
    status, _, stderr = run_cli("embed", *photos, "--out", out, *common)
    assert status == 0, stderr
    status, _, stderr = run_cli("embed", *photos, "--out", out, *common, "--model-class", OTHER)
    assert status == 2 and f"was made with model class {VARIANT}, not {OTHER}" in stderr


def test_a_stock_folder_refuses_a_variant_on_resume(tmp_path, model_dir, photos):
    out = tmp_path / "folder"
    common = ["--model", model_dir, "--device", "cpu", "--quiet", "--workers", "0"]
    assert run_cli("embed", *photos, "--out", out, *common)[0] == 0
    status, _, stderr = run_cli("embed", *photos, "--out", out, *common, "--model-class", VARIANT)
    assert status == 2 and f"model class align_torch:AlignModel, not {VARIANT}" in stderr


def test_a_changed_variant_source_is_named(tmp_path, model_dir, photos, monkeypatch):
    """The folder records the sha256 of the variant's module file: an edited variant is refused on resume (rows of
    two codes in one folder) and named, as a note, on search."""
    out = tmp_path / "folder"
    common = ["--model", model_dir, "--device", "cpu", "--quiet", "--workers", "0"]
    assert run_cli("embed", *photos, "--out", out, *common, "--model-class", VARIANT)[0] == 0
    info = json.loads((out / "embeddings.json").read_text())
    info["model_class"]["source"] = "sha256:" + "0" * 64  # as if the file had been edited since
    (out / "embeddings.json").write_text(json.dumps(info))
    status, _, stderr = run_cli("embed", *photos, "--out", out, *common)
    assert status == 2 and "variants.py has changed since" in stderr
    status, _, stderr = run_cli("search", out, "--image", photos[0], "--device", "cpu")
    assert status == 0 and "note:" in stderr and "has changed since" in stderr
