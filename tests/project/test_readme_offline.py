"""README, "Quick start, offline": its shell block runs as written, in a fresh folder outside the repository that
holds what a user's clone would (notebooks/ and nothing else: the photos come from scikit-image, which the
README's set-up installs), then its Python block in the same folder. Relative paths stay relative:
`ALIGN_MODEL=starter` names the folder `init` wrote where the user stands, not one under notebooks/."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of the README section `title` (any heading level), up to the next heading."""
    body = README.split(f" {title}\n", 1)[1]
    return re.split(r"\n#{1,6} ", body, maxsplit=1)[0]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


QUICK_START = "Quick start, offline"


def test_the_first_command_a_newcomer_meets_is_the_offline_quick_start():
    """The README's first code block that runs `align-torch` is the quick start's, which needs no Hub and no
    file of the user's: `photo.jpg` is written from scikit-image's sample data before `zero-shot` reads it."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S)
    first = next(b for b in blocks if "align-torch " in b)
    assert first == bash_blocks(section(QUICK_START))[0]
    lines = first.splitlines()
    assert lines[0] == "export HF_HUB_OFFLINE=1" and lines[1].startswith("align-torch init ")
    uses = [i for i, line in enumerate(lines) if "photo.jpg" in line]
    assert "skimage.data" in lines[uses[0]] and ".save('photo.jpg')" in lines[uses[0]], first


def test_readme_set_up_installs_jupyter_for_the_offline_block():
    """The main set-up command installs an extra that brings `jupyter execute` (nbclient) and a kernel."""
    setup = bash_blocks(section("Set up"))[0]
    extras = re.search(r'pip install -e "\.\[([a-z,-]+)\]"', setup)
    assert extras, setup
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = " ".join(dep for extra in extras.group(1).split(",") for dep in optional[extra])
    assert "nbclient" in installed and "ipykernel" in installed and "scikit-image" in installed, installed
    assert "jupyter" in " ".join(bash_blocks(section(QUICK_START)))


@pytest.mark.slow
def test_readme_quick_start_blocks_run_verbatim(tmp_path: Path):
    blocks = bash_blocks(section(QUICK_START))
    assert blocks and "ALIGN_MODEL=starter jupyter execute notebooks/" in blocks[-1]
    clone = tmp_path / "clone"  # outside the repository, holding only what the clone ships that the block reads
    shutil.copytree(ROOT / "notebooks", clone / "notebooks")
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("ALIGN_MODEL", None)
    for block in blocks:
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block], cwd=clone, env=env, capture_output=True, text=True, timeout=600
        )
        assert run.returncode == 0, f"{block}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert (clone / "starter" / "config.json").is_file() and not (clone / "notebooks" / "starter").exists()
    assert "a cat" in run.stdout and "a a cat" not in run.stdout
    assert len(list((clone / "photos").glob("*.jpg"))) == 4
    for block in python_blocks(section(QUICK_START)):
        run = subprocess.run([sys.executable, "-c", block], cwd=clone, env=env, capture_output=True, text=True)
        assert run.returncode == 0, f"{block}\nstderr:\n{run.stderr[-3000:]}"
