"""The everyday-job commands (zero-shot, embed, embed-text, search) on a tiny checkpoint with real photos."""

from __future__ import annotations

import json

import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from align_torch import AlignModel, AlignProcessor
from align_torch.cli import main
from align_torch.data.images import load_image
from align_torch.retrieval.embeddings_file import EmbeddingFile
from align_torch.util.device import resolve_device
from tests.helpers.cli import run_cli
from tests.helpers.job_data import write_collection

TOL = 1e-5
JOB_COMMANDS = ("zero-shot", "embed", "embed-text", "search")


@pytest.fixture(scope="module")
def tiny(model_dir):
    return AlignModel.from_pretrained(model_dir), AlignProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jobs") / "photos"
    return folder, write_collection(folder)


@pytest.fixture(scope="module")
def embedded(collection, model_dir, tmp_path_factory):
    """`align-torch embed` over the whole folder, two loader workers, batches of 2 (so batches mix good and bad)."""
    folder, _ = collection
    out = tmp_path_factory.mktemp("embedded") / "photos.safetensors"
    status, stdout, stderr = run_cli(
        "embed", folder, "--out", out, "--model", model_dir, "--batch-size", 2, "--workers", 2
    )
    return status, stderr, out


def image_embedding(tiny, image: PIL.Image.Image) -> torch.Tensor:
    model, processor = tiny
    with torch.no_grad():
        return model.encode_image(processor(images=image)["pixel_values"], normalize=True)[0]


@pytest.mark.parametrize("command", JOB_COMMANDS)
def test_help_on_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert f"align-torch {command}" in text and "--model" in text and "--device" in text
    if command != "search":  # search defaults to the model recorded in the embeddings file
        assert "kakaobrain/align-base" in text


def test_embed_folder_skips_bad_files_and_the_output_loads(embedded, collection, tiny, model_dir):
    status, stderr, out = embedded
    _, files = collection
    assert status == 0
    index = EmbeddingFile.load(out)
    assert index.kind == "image" and index.model == str(model_dir)
    assert index.items == [str(p) for p in sorted(files["good"])]
    assert sorted(s["item"] for s in index.skipped) == sorted(str(p) for p in files["bad"])
    for bad in files["bad"]:
        assert f"skipped {bad}" in stderr
    assert f"embedded {len(files['good'])} images, skipped 3 unreadable" in stderr
    assert index.vectors.dtype == torch.float32
    torch.testing.assert_close(index.vectors.norm(dim=-1), torch.ones(len(index.items)))
    for item, row in zip(index.items, index.vectors, strict=True):
        torch.testing.assert_close(row, image_embedding(tiny, load_image(item)), rtol=0, atol=TOL)


def test_exif_rotated_jpeg_embeds_like_the_image_rotated_by_hand(embedded, collection, tiny):
    _, _, out = embedded
    _, files = collection
    exif_jpeg, by_hand = files["rotated"]
    index = EmbeddingFile.load(out)
    rows = {item: row for item, row in zip(index.items, index.vectors, strict=True)}
    torch.testing.assert_close(rows[str(exif_jpeg)], rows[str(by_hand)], rtol=0, atol=1e-6)
    with PIL.Image.open(exif_jpeg) as stored:  # the same file without its orientation applied
        unrotated = image_embedding(tiny, stored.convert("RGB"))
    assert (rows[str(exif_jpeg)] - unrotated).abs().max() > 10 * TOL


def test_embed_strict_stops_at_a_bad_file_and_writes_nothing(collection, model_dir, tmp_path):
    folder, files = collection
    out = tmp_path / "photos.safetensors"
    out.write_bytes(b"an earlier run")
    status, _, stderr = run_cli("embed", folder, "--out", out, "--model", model_dir, "--strict", "--workers", 0)
    assert status == 1
    assert "nothing written" in stderr and any(str(p) in stderr for p in files["bad"])
    assert out.read_bytes() == b"an earlier run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos.safetensors"]  # no temporary files left
    status, _, _ = run_cli("embed", *files["good"], "--out", out, "--model", model_dir, "--strict", "--workers", 0)
    assert status == 0 and len(EmbeddingFile.load(out).items) == len(files["good"])


def test_a_failed_save_leaves_the_old_file_whole(tmp_path, monkeypatch):
    out = tmp_path / "e.safetensors"
    EmbeddingFile(F.normalize(torch.randn(2, 4), dim=-1), ["a", "b"], "text", "m").save(out)
    before = out.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("align_torch.retrieval.embeddings_file.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        EmbeddingFile(torch.zeros(1, 4), ["c"], "text", "m").save(out)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["e.safetensors"]


def test_zero_shot_json_ranks_labels_with_the_models_probabilities(collection, tiny, model_dir):
    folder, _ = collection
    model, processor = tiny
    images = [folder / "chelsea.jpg", folder / "sub" / "coffee.png", folder / "notes_as.jpg"]
    labels = ["an image of a cat", "a cup of coffee", "a rocket"]
    status, stdout, stderr = run_cli(
        "zero-shot", *images, "--labels", *labels, "--templates", "none", "--json", "--model", model_dir, "--workers", 0
    )
    assert status == 0, stderr
    report = json.loads(stdout)
    assert report["labels"] == labels and report["templates"] == "none"
    assert [r["image"] for r in report["results"]] == [str(p) for p in images[:2]]
    assert report["skipped"] == [{"image": str(images[2]), "error": "not an image file PIL can read"}]
    with torch.no_grad():
        expected = model(**processor(text=labels, images=[load_image(p) for p in images[:2]])).logits_per_image
    for result, logits in zip(report["results"], expected, strict=True):
        preds = result["predictions"]
        probs = [p["prob"] for p in preds]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-6)
        assert sorted(p["label"] for p in preds) == sorted(labels)
        for p in preds:
            c = labels.index(p["label"])
            # The command runs the fused model, whose float32 rounding differs from the plain model's by up to a
            # few 1e-5 here (1.01e-5 seen on one thread); a wrong label or probability is off by far more.
            assert p["logit"] == pytest.approx(logits[c].item(), rel=5 * TOL, abs=5 * TOL)
            assert p["prob"] == pytest.approx(logits.softmax(-1)[c].item(), abs=5 * TOL)


def test_zero_shot_text_output_and_strict(collection, model_dir):
    folder, _ = collection
    args = ("--labels", "cat", "dog", "--templates", "imagenet", "-k", "1", "--model", model_dir, "--workers", 0)
    status, stdout, stderr = run_cli("zero-shot", folder / "chelsea.jpg", *args)
    assert "160/160" in stderr  # a progress bar over the classifier's 2 x 80 prompts
    lines = stdout.splitlines()
    assert status == 0 and lines[0] == str(folder / "chelsea.jpg") and len(lines) == 2
    prob, label = lines[1].split()
    # The text form prints the JSON form's best prediction (which the test above checks against the model).
    status, stdout, stderr = run_cli("zero-shot", folder / "chelsea.jpg", *args, "--json", "--quiet")
    assert "160/160" not in stderr
    best = json.loads(stdout)["results"][0]["predictions"][0]
    assert status == 0 and label == best["label"] and float(prob) == pytest.approx(best["prob"], abs=1e-4)
    status, _, stderr = run_cli("zero-shot", folder / "chelsea.jpg", folder / "truncated.jpg", *args, "--strict")
    assert status == 1 and "truncated.jpg" in stderr


def test_embed_text_and_search_find_the_matching_text(tiny, model_dir, tmp_path):
    model, processor = tiny
    lines = ["a photo of a cat", "  une tasse de café  ", "a red rocket on the launch pad", "a dog", ""]
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")  # row i = line i
    out = tmp_path / "texts.safetensors"
    status, _, stderr = run_cli("embed-text", tmp_path / "texts.txt", "--out", out, "--model", model_dir)
    assert status == 0 and "embedded 4 texts" in stderr
    index = EmbeddingFile.load(out)
    texts = ["a photo of a cat", "une tasse de café", "a red rocket on the launch pad", "a dog"]
    assert index.items == texts and index.kind == "text"
    with torch.no_grad():
        expected = F.normalize(model.get_text_features(**processor(text=texts)), dim=-1)
    torch.testing.assert_close(index.vectors, expected, rtol=0, atol=TOL)

    # No --model: the query is embedded with the model recorded in the file.
    status, stdout, _ = run_cli("search", out, "a red rocket on the launch pad", "-k", 2, "--json")
    hits = json.loads(stdout)["results"]
    assert status == 0 and len(hits) == 2
    assert hits[0]["item"] == "a red rocket on the launch pad" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits[0]["score"] > hits[1]["score"] and hits[0]["rank"] == 1


def test_job_commands_fuse_the_model_unless_told_not_to(collection, model_dir, tmp_path, monkeypatch):
    from align_torch.commands import _common
    from align_torch.inference.fast import is_fused

    loaded: list[AlignModel] = []
    real = _common.load_model_and_processor

    def spy(*args, **kwargs):
        model, processor = real(*args, **kwargs)
        loaded.append(model)
        return model, processor

    for module in ("embed", "embed_text", "zero_shot", "search", "eval"):
        monkeypatch.setattr(f"align_torch.commands.{module}.load_model_and_processor", spy)
    _, files = collection
    photo = sorted(files["good"])[0]
    rows = {}
    # --unfused: the flag's first spelling, kept for scripts written before --no-fuse.
    for extra in ([], ["--no-fuse"], ["--unfused"]):
        out = tmp_path / f"one{''.join(extra)}.safetensors"
        status, _, _ = run_cli("embed", photo, "--out", out, "--model", model_dir, *extra)
        assert status == 0
        rows[tuple(extra)] = EmbeddingFile.load(out).vectors
    assert [is_fused(m) for m in loaded] == [True, False, False]
    assert not loaded[1].training and not loaded[2].training
    torch.testing.assert_close(rows[()], rows[("--no-fuse",)], rtol=0, atol=TOL)
    torch.testing.assert_close(rows[("--unfused",)], rows[("--no-fuse",)], rtol=0, atol=0)


def test_search_images_prints_scores_best_first(embedded, tiny, model_dir):
    _, _, out = embedded
    model, processor = tiny
    status, stdout, _ = run_cli("search", out, "a cat", "-k", 3, "--model", model_dir)
    assert status == 0
    rows = [line.split(maxsplit=2) for line in stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    index = EmbeddingFile.load(out)
    with torch.no_grad():
        query = F.normalize(model.get_text_features(**processor(text=["a cat"])), dim=-1)[0]
    scores = dict(zip(index.items, (index.vectors @ query).tolist(), strict=True))
    printed = [float(r[1]) for r in rows]
    assert printed == sorted(printed, reverse=True)
    assert printed == pytest.approx([scores[r[2]] for r in rows], abs=1e-4)
    assert printed[0] == pytest.approx(max(scores.values()), abs=1e-4)  # (the two rotated photos tie)


def test_search_errors_name_the_problem(tmp_path, model_dir):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    status, _, stderr = run_cli("search", tmp_path / "other.safetensors", "q", "--model", model_dir)
    assert status == 2 and "not an align_torch embeddings file" in stderr
    status, _, stderr = run_cli("search", tmp_path / "absent.safetensors", "q")
    assert status == 2 and "does not exist" in stderr
    EmbeddingFile(torch.ones(1, 5) / 5**0.5, ["x"], "image", str(model_dir)).save(tmp_path / "d5.safetensors")
    status, _, stderr = run_cli("search", tmp_path / "d5.safetensors", "q")
    assert status == 2 and "has 80 dimensions but the file's have 5" in stderr
    # A version no align_torch wrote (a newer one's, or an edited file): refused by name, not misread.
    meta = {"format": "align_torch.embeddings", "version": "9", "kind": "image", "model": "m", "items": '["x"]'}
    save_file({"embeddings": torch.ones(1, 5) / 5**0.5}, tmp_path / "v9.safetensors", metadata=meta)
    status, _, stderr = run_cli("search", tmp_path / "v9.safetensors", "q")
    assert status == 2 and "has embeddings format version '9'; this align_torch reads versions '1', '2', '3'" in stderr


def test_missing_inputs_are_usage_errors(tmp_path, model_dir):
    status, _, stderr = run_cli("embed", tmp_path / "nope", "--out", tmp_path / "e.safetensors")
    assert status == 2 and "no such file or folder" in stderr
    (tmp_path / "blank.txt").write_text("\n  \n")
    status, _, stderr = run_cli("embed-text", tmp_path / "blank.txt", "--out", tmp_path / "e.safetensors")
    assert status == 2 and "no non-blank lines" in stderr
    assert not (tmp_path / "e.safetensors").exists()
    status, _, stderr = run_cli("embed-text", tmp_path / "blank.txt", "--out", tmp_path)
    assert status == 2 and "is a folder" in stderr


def test_device_resolution():
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
