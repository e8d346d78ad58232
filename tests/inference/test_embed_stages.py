"""`embed --draft-decode` and `--profile`: off by default the rows are those of the exact decode, bit for bit; on,
a large JPEG is decoded at a smaller scale and the rows move by at most DRAFT_MIN_COSINE (docs/fast-inference.md);
the folder records it; --profile names every stage."""

from __future__ import annotations

import os
from pathlib import Path

import PIL.Image
import pytest
import torch

from align_torch.data import load_image
from align_torch.inference.embed import encode_image_batch
from align_torch.inference.loader import load_for_inference
from align_torch.retrieval.embeddings_file import EmbeddingFile
from align_torch.retrieval.layout import FolderInfo
from tests.helpers.cli import run_cli
from tests.helpers.export_data import photo_files

# The lowest cosine of draft-decoded rows to exact ones that the tiny test model gives on these photos (0.923
# measured: it resizes them to 72 pixels, where draft mode decodes at 1/8); align-base's, at 346 pixels, are in
# docs/fast-inference.md.
DRAFT_MIN_COSINE = 0.9


@pytest.fixture(scope="module")
def large_jpegs(tmp_path_factory) -> list[Path]:
    """Six real photos enlarged 3x as JPEG: large enough that draft mode decodes them at a smaller scale."""
    return photo_files(tmp_path_factory.mktemp("large_jpegs"), 6, scale=3)


def _embed(model_dir, files, out: Path, *extra) -> tuple[int, str]:
    argv = ["embed", *files, "--out", out, "--model", model_dir, "--device", "cpu", "--quiet", "--workers", "0"]
    status, _, err = run_cli(*argv, "--batch-size", str(len(files)), *extra)
    assert status == 0, err
    return status, err


def test_draft_decode_is_off_by_default_and_within_its_cosine_when_on(model_dir, large_jpegs, tmp_path):
    _embed(model_dir, large_jpegs, tmp_path / "exact.safetensors")
    _embed(model_dir, large_jpegs, tmp_path / "draft.safetensors", "--draft-decode")
    exact, draft = (EmbeddingFile.load(tmp_path / f"{n}.safetensors").vectors for n in ("exact", "draft"))
    model, processor = load_for_inference(model_dir, "cpu")
    pixels = processor.image_processor([load_image(p) for p in large_jpegs], return_tensors="pt")["pixel_values"]
    assert torch.equal(exact, encode_image_batch(model, pixels))
    cosines = (exact * draft).sum(-1)  # (6,)
    assert float(cosines.min()) >= DRAFT_MIN_COSINE
    assert not torch.equal(exact, draft)
    # Draft mode decodes these at a fraction of their size.
    size = processor.image_processor.size
    assert load_image(large_jpegs[0], draft=size).size[0] < PIL.Image.open(large_jpegs[0]).size[0]


def test_draft_decode_is_recorded_and_a_folder_is_finished_the_way_it_began(model_dir, large_jpegs, tmp_path):
    out = tmp_path / "folder"
    argv = ["embed", *large_jpegs[:2], "--out", out, "--model", model_dir, "--device", "cpu", "--quiet"]
    status, _, err = run_cli(*argv, "--workers", "0", "--draft-decode", "--partition-size", "1")
    assert status == 0, err
    assert FolderInfo.load(out).compute.endswith(", draft JPEG decode")
    status, _, err = run_cli(*argv, "--workers", "0")
    assert status == 2 and "compute" in err, err


@pytest.mark.parametrize("out", ["rows.safetensors", "folder"])
def test_profile_prints_the_seconds_of_every_stage(model_dir, large_jpegs, tmp_path, out):
    _, quiet = _embed(model_dir, large_jpegs[:2], tmp_path / f"a{out}")
    _, err = _embed(model_dir, large_jpegs[:2], tmp_path / out, "--profile")
    for stage in ("decode", "resize", "normalise", "collate", "wait", "model", "write"):
        assert f" {stage} " in err, err
        assert f" {stage} " not in quiet
    assert "2 images" in err


class _Niceness(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> int:
        return os.nice(0)


def test_loading_workers_yield_to_the_model_on_the_cpu_only():
    from align_torch.inference.embed import loader_options

    def worker_niceness(device: str) -> int:
        loader = torch.utils.data.DataLoader(_Niceness(), num_workers=1, **loader_options(torch.device(device), 1))
        return int(next(iter(loader)))

    assert worker_niceness("cpu") > os.nice(0)
    assert "worker_init_fn" not in loader_options(torch.device("cuda"), 1)


def test_commands_default_to_torch_unless_the_environment_names_a_backend(monkeypatch):
    from align_torch import defaults
    from align_torch.cli import build_parser

    monkeypatch.delenv("ALIGN_TORCH_BACKEND")
    assert defaults.backend() == "torch"
    assert build_parser().parse_args(["embed", "x.jpg", "--out", "o"]).backend == "torch"
    monkeypatch.setenv("ALIGN_TORCH_BACKEND", "auto")
    assert defaults.backend() == "auto"
    assert build_parser().parse_args(["embed", "x.jpg", "--out", "o"]).backend == "auto"
