"""Numbers checked where they enter the commands: each test is named after the input it guards, and each
refusal is one line with exit status 2 that names the file, field or flag, with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers.cli import run_cli


def poisoned_model(src: Path, dst: Path, name: str = "text_model.layers.0.mlp.fc1.weight") -> Path:
    """A copy of the model folder `src` with one NaN in weight `name`."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def one_line_usage_error(status: int, stderr: str, *words: str) -> None:
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


# --- non-finite weights, named at load -------------------------------------------------------------------
def test_embed_text_refuses_nan_weights(model_dir, tmp_path):
    bad = poisoned_model(model_dir, tmp_path / "nan-model")
    (tmp_path / "t.txt").write_text("a cat\na dog\n")
    out = tmp_path / "t.safetensors"
    status, _, err = run_cli("embed-text", tmp_path / "t.txt", "--out", out, "--model", bad, "--quiet")
    one_line_usage_error(status, err, "text_model.layers.0.mlp.fc1.weight", "NaN")
    assert not out.exists()


def test_export_refuses_nan_weights(model_dir, tmp_path):
    bad = poisoned_model(model_dir, tmp_path / "nan-model")
    out = tmp_path / "exported"
    status, _, err = run_cli("export", "--model", bad, "--format", "pt2", "--out", out, "--quiet")
    one_line_usage_error(status, err, "text_model.layers.0.mlp.fc1.weight")
    assert not out.exists()


def test_export_never_records_nan_parity(model_dir, tmp_path):
    """A tower whose outputs are NaN (however it came about) fails the parity check instead of writing NaN,
    which is not JSON, as its parity."""
    from align_torch import AlignModel, AlignProcessor
    from align_torch.inference.export import export_towers

    model = AlignModel.from_pretrained(model_dir)
    with torch.no_grad():
        model.text_projection.weight.fill_(float("nan"))
    tokenizer = AlignProcessor.from_pretrained(model_dir).tokenizer
    with pytest.raises(ValueError, match="parity check gave NaN"):
        export_towers(model, tokenizer, tmp_path / "exported", towers=("text",), fmt="pt2")
    assert not (tmp_path / "exported").exists()


# --- export refuses what it cannot honour ----------------------------------------------------------------
def test_export_refuses_opset_11(model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "exported"
    status, _, err = run_cli("export", "--model", model_dir, "--tower", "text", "--opset", "11", "--out", out)
    one_line_usage_error(status, err, "--opset 11", "18")
    assert not out.exists()


def test_export_refuses_image_size_8(model_dir, tmp_path):
    out = tmp_path / "exported"
    status, _, err = run_cli(
        "export", "--model", model_dir, "--tower", "image", "--format", "pt2", "--image-size", "8", "--out", out
    )
    one_line_usage_error(status, err, "--image-size 8x8", "at least 32x32")
    assert not out.exists()


def test_export_paths_have_no_double_slash(model_dir, tmp_path):
    out = f"{tmp_path / 'exported'}/"
    status, stdout, err = run_cli("export", "--model", model_dir, "--tower", "text", "--format", "pt2", "--out", out)
    assert status == 0, err
    assert "//" not in stdout and f"{tmp_path / 'exported' / 'text.pt2'}: text tower" in stdout
    assert json.loads((tmp_path / "exported" / "text.json").read_text())["parity"]["max_abs"] < 1e-4


def test_export_shows_progress_on_stderr_unless_quiet(model_dir, tmp_path):
    out = tmp_path / "exported"
    status, _, err = run_cli("export", "--model", model_dir, "--tower", "text", "--format", "pt2", "--out", out)
    assert status == 0 and "export" in err and "graph" in err, err  # the bar, one step per graph
    again = ("--tower", "text", "--format", "pt2", "--out", out, "--overwrite", "--quiet")
    status, _, err = run_cli("export", "--model", model_dir, *again)
    assert status == 0 and err == "", err


# --- the command line around it --------------------------------------------------------------------------
def test_embed_text_refuses_blank_lines(model_dir, tmp_path):
    """Row i is line i: a blank line inside the file is refused by its number, not skipped (which shifted every
    later row); blank lines at the end of the file are ignored."""
    from align_torch.retrieval.embeddings_file import EmbeddingIndex

    (tmp_path / "gap.txt").write_text("a cat\n\na dog\n")
    out = tmp_path / "t.safetensors"
    status, _, err = run_cli("embed-text", tmp_path / "gap.txt", "--out", out, "--model", model_dir, "--quiet")
    one_line_usage_error(status, err, "gap.txt", "line 2 is blank")
    assert not out.exists()
    (tmp_path / "end.txt").write_text("a cat\na dog\n\n  \n")
    status, _, err = run_cli("embed-text", tmp_path / "end.txt", "--out", out, "--model", model_dir, "--quiet")
    assert status == 0, err
    assert EmbeddingIndex.load(out).items == ["a cat", "a dog"]


def test_unknown_flag_names_the_subcommand_and_its_help(tmp_path, capsys):
    from align_torch.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["embed-text", str(tmp_path / "t.txt"), "--out", str(tmp_path / "o.safetensors"), "--bogus"])
    err = capsys.readouterr().err
    one_line_usage_error(stop.value.code, err, "align-torch embed-text: error:", "--bogus", "embed-text --help")
