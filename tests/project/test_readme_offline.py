"""README, "Trying it offline": its shell block runs as written, in a fresh folder outside the repository that
holds what a user's clone and files would (notebooks/, photo.jpg, photos/), with the programs the README's
set-up command installs. Relative paths stay relative: `ALIGN_MODEL=starter` names the folder `init` wrote
where the user stands, not one under notebooks/."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.job_data import photo

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of the README section `title` (any heading level), up to the next heading."""
    body = README.split(f" {title}\n", 1)[1]
    return re.split(r"\n#{1,6} ", body, maxsplit=1)[0]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_readme_set_up_installs_jupyter_for_the_offline_block():
    """The main set-up command installs an extra that brings `jupyter execute` (nbclient) and a kernel."""
    setup = bash_blocks(section("Set up"))[0]
    extras = re.search(r'pip install -e "\.\[([a-z,-]+)\]"', setup)
    assert extras, setup
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = " ".join(dep for extra in extras.group(1).split(",") for dep in optional[extra])
    assert "nbclient" in installed and "ipykernel" in installed, installed
    assert "jupyter" in " ".join(bash_blocks(section("Trying it offline")))


@pytest.mark.slow
def test_readme_trying_it_offline_block_runs_verbatim(tmp_path: Path):
    blocks = bash_blocks(section("Trying it offline"))
    assert blocks and "ALIGN_MODEL=starter jupyter execute notebooks/" in blocks[-1]
    clone = tmp_path / "clone"  # outside the repository
    shutil.copytree(ROOT / "notebooks", clone / "notebooks")
    photo("chelsea").save(clone / "photo.jpg")
    (clone / "photos").mkdir()
    for name in ("coffee", "astronaut", "rocket"):
        photo(name).save(clone / "photos" / f"{name}.jpg")
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
