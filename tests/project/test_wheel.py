"""The package a user would install: a wheel built from the clone installs with its data files and runs `init`,
`zero-shot`, `embed` and `serve`'s page from a folder outside the repository, importing only what the wheel
installed. To stay fast and offline the wheel goes in with --no-deps into its own folder (PYTHONPATH), and
torch and the other dependencies come from this environment."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.job_data import photo

ROOT = Path(__file__).resolve().parents[2]


def _pip(*args: str, cwd: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]


@pytest.mark.slow
def test_wheel_installs_with_its_data_files_and_runs_init_zero_shot_and_serve_outside_the_repo(tmp_path: Path):
    # A copy of the clone's package files, so building leaves nothing (build/, *.egg-info) in the repository.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "align_torch", src / "align_torch", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src), cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("align_torch-*.whl"))
    site = tmp_path / "site"
    _pip("install", "--no-deps", "-q", "--target", str(site), str(wheel), cwd=tmp_path)

    work = tmp_path / "work"
    (work / "photos").mkdir(parents=True)
    photo("chelsea").save(work / "photo.jpg")
    for name in ("coffee", "rocket"):
        photo(name).save(work / "photos" / f"{name}.jpg")
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        return done.stdout

    where = run("-c", "import align_torch; print(align_torch.__file__)").strip()
    assert Path(where).is_relative_to(site), where
    run("-m", "align_torch", "init", "starter")
    written = {p.name for p in (work / "starter").iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= written, written
    result = json.loads(
        run("-m", "align_torch", "zero-shot", "photo.jpg", "--labels", "cat", "dog", "--model", "starter", "--json")
    )
    assert "cat" in json.dumps(result) and "dog" in json.dumps(result)
    run("-m", "align_torch", "embed", "photos", "--out", "photos.safetensors", "--model", "starter", "--quiet")

    server = subprocess.Popen(
        [sys.executable, "-m", "align_torch", "serve", "photos.safetensors", "--port", "0", "--model", "starter"],
        cwd=work,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = ""
        while "http://" not in line:
            line = server.stderr.readline()
            assert line or server.poll() is None, f"serve exited before listening: {server.stderr.read()[-2000:]}"
        url = line.split("serve: ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=30) as response:
            page = response.read().decode()
        assert response.status == 200 and "<title>align-torch search</title>" in page
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
        server.stderr.close()
