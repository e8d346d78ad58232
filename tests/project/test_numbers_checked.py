"""The project's own scripts: `.ci/run` says before it installs a system package and can be told not to, and
notebook 04 (like 01-03) takes a relative ALIGN_MODEL from where jupyter was started."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _apt_block() -> str:
    """The part of .ci/run that installs chromium, up to the virtual environment's creation."""
    script = (ROOT / ".ci" / "run").read_text()
    start = script.index("# The search page's test")
    return script[start : script.index("python3 -m venv")]


@pytest.mark.parametrize("skip", [False, True])
def test_ci_run_says_when_it_installs_system_packages_and_can_be_told_not_to(tmp_path, skip):
    """With stand-ins for id (root), apt-get (records its calls) and no chromium on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "apt.log"}\n')
    for tool in ("id", "apt-get"):
        (bin_dir / tool).chmod(0o755)
    # PATH holds the stand-ins alone: a chromium the machine already has (CI installs it) must not be seen.
    env = {"PATH": str(bin_dir), **({"ALIGN_TORCH_CI_NO_APT": "1"} if skip else {})}
    done = subprocess.run(
        [shutil.which("bash"), "-euo", "pipefail", "-c", _apt_block()], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "apt.log").read_text() if (tmp_path / "apt.log").exists() else ""
    if skip:
        assert calls == "" and "ALIGN_TORCH_CI_NO_APT" in done.stderr and "installing no system package" in done.stderr
    else:
        assert "install" in calls and "chromium" in calls
        assert re.search(r"installing the system package chromium with apt-get.*ALIGN_TORCH_CI_NO_APT=1", done.stderr)


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_notebook_04_with_a_relative_align_model(path, model_dir, tmp_path):
    """Each notebook's model cell, run as jupyter runs it (the kernel in notebooks/, $PWD where jupyter was
    started), loads `ALIGN_MODEL=starter` from $PWD: the README's quick start."""
    nb = nbformat.read(path, as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and 'os.environ.get("ALIGN_MODEL"' in c.source)
    lines = cell.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("MODEL = os.environ.get"))
    block = [lines[first]]
    for line in lines[first + 1 :]:  # the lines that resolve MODEL: comments and an `if` with its body
        if not line.startswith(("#", "if ", "    ")):
            break
        block.append(line)
    code = "\n".join(["import os", *block, "from align_torch import AlignModel", "AlignModel.from_pretrained(MODEL)"])
    (tmp_path / "starter").symlink_to(model_dir, target_is_directory=True)
    (tmp_path / "notebooks").mkdir()
    env = {**os.environ, "PWD": str(tmp_path), "ALIGN_MODEL": "starter", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path / "notebooks", env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
