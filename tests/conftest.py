"""Shared fixtures. Full-size models are built once per session: building and converting align-base
costs seconds, running it costs more, so every parity test shares them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers.checkpoints import tiny_hf_checkpoint, write_hf_checkpoint  # noqa: E402
from tests.helpers.hf_reference import hf_align_model  # noqa: E402

torch.set_num_threads(max(1, torch.get_num_threads()))
# The suite runs PyTorch unless a test names a backend, whatever the environment that runs it says; set here at
# import so that environments copied by test modules for their subprocesses carry it too.
os.environ["ALIGN_TORCH_BACKEND"] = "torch"


@pytest.fixture(scope="session", autouse=True)
def _backend_environment(tmp_path_factory):
    """Exported ONNX graphs go to a cache folder of the session's own, not the user's."""
    saved = {k: os.environ.get(k) for k in ("ALIGN_TORCH_CACHE",)}
    os.environ["ALIGN_TORCH_CACHE"] = str(tmp_path_factory.mktemp("align_torch_cache"))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def hf_full():
    """transformers' AlignModel at align-base size, random weights, randomised BN/LN, temperature != 1."""
    return hf_align_model(seed=0)


@pytest.fixture(scope="session")
def hf_full_dir(hf_full, tmp_path_factory) -> Path:
    """hf_full saved as kakaobrain/align-base ships it: config.json + pytorch_model.bin + processor files."""
    from tests.helpers.proc_data import ALIGN_BASE_PREPROCESSOR

    return write_hf_checkpoint(
        tmp_path_factory.mktemp("hf_full"), hf_full, fmt="bin", preprocessor=ALIGN_BASE_PREPROCESSOR
    )


@pytest.fixture(scope="session")
def native_full(hf_full_dir):
    """Our AlignModel loaded from hf_full's HF-layout folder (converted in memory)."""
    from align_torch import AlignModel

    return AlignModel.from_pretrained(hf_full_dir)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """(folder, transformers model): a tiny random HF-layout checkpoint with processor files."""
    return tiny_hf_checkpoint(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture(scope="session")
def tiny_hf_dir(tiny_hf) -> Path:
    return tiny_hf[0]


@pytest.fixture(scope="session")
def tiny_native_dir(tiny_hf_dir, tmp_path_factory) -> Path:
    """The tiny checkpoint converted to the native format (with processor files)."""
    from align_torch.inference.convert import convert

    return convert(tiny_hf_dir, tmp_path_factory.mktemp("tiny_native") / "model")


@pytest.fixture(scope="session")
def model_dir(tiny_native_dir, tmp_path_factory) -> Path:
    """The tiny checkpoint with BatchNorm statistics measured on real photos, so that different photos give
    clearly different embeddings (shared by the zero-shot and command-line tests)."""
    from tests.helpers.job_data import input_sensitive_checkpoint

    return input_sensitive_checkpoint(tiny_native_dir, tmp_path_factory.mktemp("photo_model") / "model")
