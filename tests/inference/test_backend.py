"""--backend torch|onnxruntime|auto: ONNX Runtime gives the PyTorch rows on real photos, the graph is cached by
the tower's fingerprint and checked on the first batch, and `auto` falls back to PyTorch without the extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from align_torch.inference.backend import OnnxTower, backend_of, choose_backends, default_cache_dir
from align_torch.inference.loader import load_for_inference
from align_torch.retrieval.embeddings_file import EmbeddingFile
from align_torch.retrieval.layout import FolderInfo
from tests.helpers import export_data
from tests.helpers.cli import run_cli

pytest.importorskip("onnxruntime")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> list[Path]:
    """The 17 real photos (skimage.data) as files: JPEG and PNG, at their own sizes."""
    return export_data.photo_files(tmp_path_factory.mktemp("backend_photos"), 17, suffixes=("png", "jpg"))


def _embed(model_dir, files, out: Path, backend: str, *extra) -> EmbeddingFile:
    argv = ["embed", *files, "--out", out, "--model", model_dir, "--device", "cpu", "--quiet", "--workers", "0"]
    status, _, err = run_cli(*argv, "--backend", backend, "--batch-size", "5", *extra)
    assert status == 0, err
    return EmbeddingFile.load(out)


def test_onnxruntime_rows_match_torch_on_photos(model_dir, photo_files, tmp_path):
    torch_rows = _embed(model_dir, photo_files, tmp_path / "torch.safetensors", "torch")
    onnx_rows = _embed(model_dir, photo_files, tmp_path / "onnx.safetensors", "onnxruntime")
    assert (torch_rows.backend, onnx_rows.backend) == ("torch", "onnxruntime")
    assert onnx_rows.items == torch_rows.items
    assert float((onnx_rows.vectors - torch_rows.vectors).abs().max()) <= 1e-4
    assert float(F.cosine_similarity(onnx_rows.vectors, torch_rows.vectors).min()) >= 0.99999
    # The photos are far apart, so the agreement above is not that of near-identical rows.
    sims = torch_rows.vectors @ torch_rows.vectors.T  # (17, 17)
    assert float(sims[~torch.eye(17, dtype=torch.bool)].min()) < 0.9


def test_auto_is_onnxruntime_for_images_and_torch_for_text_on_the_cpu(model_dir, photo_files, tmp_path):
    rows = _embed(model_dir, photo_files[:3], tmp_path / "auto.safetensors", "auto")
    assert rows.backend == "image onnxruntime, text torch"
    argv = ["embed", *photo_files[:3], "--out", tmp_path / "folder", "--model", model_dir, "--device", "cpu"]
    status, _, err = run_cli(*argv, "--workers", "0", "--quiet", "--backend", "auto")
    assert status == 0, err
    assert FolderInfo.load(tmp_path / "folder").compute == "float32, image onnxruntime, text torch"
    # A folder is finished with the backend that started it: rows of two backends differ by up to 1e-4.
    status, _, err = run_cli(*argv, "--workers", "0", "--quiet", "--backend", "torch")
    assert status == 2 and "compute" in err, err
    assert choose_backends("auto", torch.device("cuda")) == {"image": "torch", "text": "torch"}
    assert choose_backends("auto", CPU, torch.bfloat16) == {"image": "torch", "text": "torch"}


def test_auto_falls_back_to_torch_without_onnxruntime(model_dir, photo_files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    assert choose_backends("auto", CPU) == {"image": "torch", "text": "torch"}
    rows = _embed(model_dir, photo_files[:3], tmp_path / "auto.safetensors", "auto")
    assert rows.backend == "torch"
    argv = ["embed", photo_files[0], "--out", tmp_path / "x.safetensors", "--model", model_dir, "--device", "cpu"]
    status, _, err = run_cli(*argv, "--backend", "onnxruntime")
    assert status == 2 and "export extra" in err, err
    assert not (tmp_path / "x.safetensors").exists()


def test_text_tower_in_onnxruntime_matches_torch(model_dir, tmp_path):
    texts = ["a", "a photo of a cat", "two red bicycles leaning against a stone wall near the harbour at dusk"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    rows = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.safetensors"
        argv = ["embed-text", tmp_path / "texts.txt", "--out", out, "--model", model_dir, "--device", "cpu"]
        status, _, err = run_cli(*argv, "--backend", backend, "--quiet")
        assert status == 0, err
        rows[backend] = EmbeddingFile.load(out)
    assert rows["onnxruntime"].backend == "onnxruntime"
    assert float((rows["onnxruntime"].vectors - rows["torch"].vectors).abs().max()) <= 1e-4


def _close(got: torch.Tensor, ref: torch.Tensor) -> None:
    """Pooled features (not unit rows): within 1e-4 of their largest value, as the backend's own check."""
    assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_graph_is_cached_by_fingerprint_and_a_wrong_one_is_exported_again(model_dir, tmp_path):
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    model, _ = load_for_inference(model_dir, "cpu", backend="onnxruntime")
    model.vision_model.cache_dir = tmp_path  # tower by tower: this test's own cache
    expected = model.vision_model.eager(pixels)
    assert isinstance(model.vision_model, OnnxTower) and backend_of(model) == "onnxruntime"
    _close(model.vision_model(pixels).pooler_output, expected.pooler_output)
    (graph,) = model.vision_model.graphs.values()
    assert graph.parent.parent == tmp_path and graph.parent.name == model.vision_model.fingerprint()

    # A new tower with other weights gets another fingerprint; its graph copied over this one's is caught by the
    # first-batch check and exported again.
    other, _ = load_for_inference(model_dir, "cpu", backend="onnxruntime")
    with torch.no_grad():
        other.vision_model.eager.blocks[0].project_conv.weight.mul_(1.5)
    other.vision_model.cache_dir = tmp_path
    assert other.vision_model.fingerprint() != model.vision_model.fingerprint()
    stale = tmp_path / other.vision_model.fingerprint() / graph.name
    stale.parent.mkdir()
    stale.write_bytes(graph.read_bytes())
    _close(other.vision_model(pixels).pooler_output, other.vision_model.eager(pixels).pooler_output)
    assert stale.read_bytes() != graph.read_bytes()


def test_a_graph_checked_once_is_not_checked_again_unless_its_bytes_change(model_dir, tmp_path, monkeypatch):
    """The first-batch check runs once per graph file: a later process opening the same bytes skips it (and the
    first batch's output is the check's own, not a second run); a graph whose bytes differ from the record's is
    checked again."""
    import align_torch.inference.backend as backend

    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    calls = []
    real_check = backend.check_graph
    monkeypatch.setattr(backend, "check_graph", lambda *a: calls.append(1) or real_check(*a))
    runs = []
    real_run = backend._session_run
    monkeypatch.setattr(backend, "_session_run", lambda *a: runs.append(1) or real_run(*a))

    def tower():
        model, _ = load_for_inference(model_dir, "cpu", backend="onnxruntime")
        model.vision_model.cache_dir = tmp_path
        return model.vision_model

    first = tower()
    expected = first.eager(pixels).pooler_output
    _close(first(pixels).pooler_output, expected)
    assert (len(calls), len(runs)) == (1, 1)  # exported, checked, and the check's output returned
    (graph,) = first.graphs.values()
    record = graph.with_name(graph.name + ".checked")
    assert record.is_file()
    _close(tower()(pixels).pooler_output, expected)
    assert (len(calls), len(runs)) == (1, 2)  # the same bytes: not checked again
    record.write_text("0" * 64 + "\n")  # as if the graph had been replaced after its check
    _close(tower()(pixels).pooler_output, expected)
    assert (len(calls), len(runs)) == (2, 3)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGN_TORCH_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "onnx"
    monkeypatch.delenv("ALIGN_TORCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "align_torch" / "onnx"
