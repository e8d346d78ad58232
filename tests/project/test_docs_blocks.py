"""Code blocks of docs/ pages that claim to run offline as written do, on the starter model of the README's
quick start: docs/deploying.md's `.pt2` export and its call with positional inputs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("align-torch")


def blocks(page: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "docs" / page).read_text(encoding="utf-8"), re.S)


def test_the_pt2_program_is_called_as_deploying_shows(tmp_path: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PATH"] = os.pathsep.join([str(SCRIPT.parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    init = subprocess.run([str(SCRIPT), "init", "starter"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    export = next(b for b in blocks("deploying.md", "bash") if "--format pt2" in b)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", export], cwd=tmp_path, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    call = next(b for b in blocks("deploying.md", "python") if ".pt2" in b)
    probe = call + "\nprint(tuple(image_embeds.shape), tuple(text_embeds.shape))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[0].startswith("(1, ") and "(2, " in done.stdout
