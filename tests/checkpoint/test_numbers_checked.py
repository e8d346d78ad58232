"""Numbers and files checked where checkpoints enter and leave: an HF config's keys named as the file names
them, a model transformers' ALIGN cannot hold refused before anything is written, a read-only folder not
replaced behind the user's back, and the converter script naming itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from align_torch.util import fileio
from tests.helpers.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("key", ["num_hidden_layers", "num_attention_heads"])
@pytest.mark.parametrize("value", [None, 0])
def test_hf_config_null_or_0_num_hidden_layers_and_heads_named_by_the_config_key(tiny_hf_dir, tmp_path, key, value):
    from align_torch import AlignModel

    folder = tmp_path / "hf"
    folder.mkdir()
    for f in tiny_hf_dir.iterdir():
        (folder / f.name).symlink_to(f)
    config = json.loads((tiny_hf_dir / "config.json").read_text())
    config["text_config"][key] = value
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as refused:
        AlignModel.from_pretrained(folder)
    message = str(refused.value)
    assert f"text_config.{key}" in message and "config.json" in message, message
    assert "TextConfig" not in message and "num_layers" not in message.replace("num_hidden_layers", "")


def test_convert_to_hf_refuses_a_sigmoid_model(tiny_native_dir, tmp_path):
    import dataclasses

    from align_torch import AlignModel

    config = dataclasses.replace(AlignModel.from_pretrained(tiny_native_dir).config, loss="sigmoid")
    AlignModel(config).save_pretrained(tmp_path / "sigmoid")
    status, _, err = run_cli("convert", tmp_path / "sigmoid", tmp_path / "hf", "--to", "hf")
    assert status == 2 and "loss 'sigmoid'" in err and "Hugging Face ALIGN" in err, err
    assert len(err.strip().splitlines()) == 1 and "KeyMapError" not in err
    assert not (tmp_path / "hf").exists() and [p.name for p in tmp_path.iterdir()] == ["sigmoid"]


def test_convert_overwrite_over_a_read_only_folder_leaves_no_hidden_copy(tiny_hf_dir, tmp_path, monkeypatch):
    done = run_cli("convert", tiny_hf_dir, tmp_path / "native")
    assert done[0] == 0, done[2]
    target = tmp_path / "native"
    if os.geteuid() == 0:  # root may write anywhere: the folder reads as read-only as it would to its owner
        real_access = os.access
        monkeypatch.setattr(fileio.os, "access", lambda p, mode: False if Path(p) == target else real_access(p, mode))
    target.chmod(0o555)
    try:
        status, _, err = run_cli("convert", tiny_hf_dir, target, "--overwrite")
    finally:
        target.chmod(0o755)
    assert status == 2 and "read-only" in err and str(target) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native"], "a hidden copy was left beside it"


def test_a_replaced_folder_that_cannot_be_removed_is_said(tmp_path, monkeypatch):
    """Where the old version's files cannot be removed after the swap, a warning says where they are."""
    target = tmp_path / "out"
    with fileio.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    monkeypatch.setattr(fileio.shutil, "rmtree", lambda *a, **k: None)
    with pytest.warns(UserWarning, match="could not be removed completely; what is left is at"):
        with fileio.atomic_dir(target, overwrite=True, replaceable=lambda p: True) as tmp:
            (tmp / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"


def test_convert_script_help_names_the_script():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    script = ROOT / "convert" / "convert_align_hf.py"
    done = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: convert_align_hf.py "), done.stdout
    assert "align-torch" not in done.stdout.splitlines()[0]
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("convert_align_hf.py: error:"), done.stderr
