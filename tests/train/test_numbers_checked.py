"""Numbers and options checked where they enter fine-tuning: a checkpoint's RNG list and model tensors on
--resume, and options --fsdp does not combine with, refused in one process as under torchrun."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from align_torch.train import TrainCheckpointError
from align_torch.train.state import CHECKPOINT_FILE
from tests.helpers.cli import run_cli
from tests.train.test_train_resume_checks import _copy, _edit, _resume, _set, finished  # noqa: F401


def test_resume_refuses_an_empty_rng_list(finished, tmp_path: Path):  # noqa: F811
    """Without any rank's RNG state the resume would silently stop being exact; refused, naming the field."""
    cfg, run = finished
    edited = _copy(run, tmp_path / "run")
    _edit(edited, _set("rng", []))
    with pytest.raises(TrainCheckpointError, match=r"checkpoint\.safetensors: rng is an empty list"):
        _resume(cfg, edited, epochs=2)
    assert not (edited / "final").exists()


def test_resume_names_a_mis_shaped_temperature(finished, tmp_path: Path):  # noqa: F811
    cfg, run = finished
    edited = _copy(run, tmp_path / "run")
    path = edited / CHECKPOINT_FILE
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["model.temperature"] = torch.ones(2)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(
        TrainCheckpointError, match=r"checkpoint\.safetensors: model\.temperature must be of shape \(\)"
    ):
        _resume(cfg, edited, epochs=2)


@pytest.mark.parametrize("flag, value", [("--lora-rank", "4"), ("--val", "val.csv")])
def test_fsdp_refuses_lora_rank_and_val_in_one_process(tmp_path: Path, tiny_native_dir: Path, flag: str, value: str):
    (tmp_path / "pairs.csv").write_text("image,caption\na.png,a cat\n")
    (tmp_path / "val.csv").write_text("image,caption\na.png,a cat\n")
    value = str(tmp_path / value) if value.endswith(".csv") else value
    args = ("--model", tiny_native_dir, "--train", tmp_path / "pairs.csv", "--out", tmp_path / "run", "--fsdp")
    status, _, err = run_cli("finetune", *args, flag, value, "--quiet")
    assert status == 2 and f"--fsdp does not yet combine with {flag}" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_hf_tower_folder_with_a_hostile_pickle_is_a_one_line_refusal(tiny_native_dir: Path, tmp_path: Path):
    """A `pytorch_model.bin` that would run code when unpickled: torch's weights-only unpickler refuses it, and
    the command says so in one line (exit 2) instead of ending in an UnpicklingError."""
    transformers = pytest.importorskip("transformers")
    tower = tmp_path / "tower"
    transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(tower)
    ran = tmp_path / "ran"
    payload = (
        b"\x80\x04cposix\nsystem\n(V" + f"touch {ran}".encode() + b"\ntR."
    )  # protocol 4: os.system("touch RAN") when loaded by pickle
    (tower / "pytorch_model.bin").write_bytes(payload)
    (tmp_path / "pairs.csv").write_text("image,caption\na.png,a cat\n")
    args = ("--model", tiny_native_dir, "--train", tmp_path / "pairs.csv", "--out", tmp_path / "run")
    status, _, err = run_cli("finetune", *args, "--text-tower", f"hf:{tower}", "--max-steps", "1", "--quiet")
    assert status == 2 and "--text-tower" in err and "refused unrun" in err, err
    assert len(err.strip().splitlines()) == 1 and "UnpicklingError" not in err
    assert not ran.exists() and not (tmp_path / "run" / "checkpoint.safetensors").exists()
