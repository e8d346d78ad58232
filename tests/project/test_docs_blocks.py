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


def test_your_data_builds_both_parquet_layouts_and_every_command_reads_them(tmp_path: Path):
    """docs/data.md: the stand-in of the Hub's and img2dataset's Parquet layouts, then embed, finetune and eval
    on them with the starter model, then rows in Python, as written."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PATH"] = os.pathsep.join([str(SCRIPT.parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    stand_in, rows = blocks("data.md", "python")
    (commands,) = blocks("data.md", "bash")
    done = subprocess.run([sys.executable, "-c", stand_in], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out = done.stdout.decode()
    assert "https://example.com/chelsea.jpg" in out, out  # img2dataset's columns carried into the metadata
    assert "on 30 pairs" in out, out  # 6 train images x 5 captions
    assert "retrieval: " in out and "num_images=2, num_texts=10" in out  # the test split: 2 images, 5 captions each
    done = subprocess.run([sys.executable, "-c", rows], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[0] == "8"
