"""A new user's first hour, offline: `align-torch init`, then `zero-shot`, `embed` and `search` on its model.

Runs the installed `align-torch` script in subprocesses, from a working folder outside the repository, with
HF_HUB_OFFLINE=1 and relative paths, as the README's "Quick start, offline" shows. CI's virtual environment is
itself made from the README's set-up commands (.ci/run), so running this test there is the fresh-venv check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from align_torch import AlignModel, AlignProcessor
from align_torch.retrieval.embeddings_file import EmbeddingIndex

SCRIPT = Path(sys.executable).with_name("align-torch")
REPO = Path(__file__).resolve().parents[2]


def align_torch(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([str(SCRIPT), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_init_then_zero_shot_embed_and_search_offline(tmp_path: Path):
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: install the package as the README says (pip install -e .)"
    work = tmp_path / "work"
    (work / "photos").mkdir(parents=True)
    assert REPO not in work.resolve().parents
    for name, colour in [("red.png", (220, 30, 30)), ("green.png", (30, 200, 40)), ("blue.png", (20, 40, 230))]:
        Image.new("RGB", (90, 70), colour).save(work / "photos" / name)

    done = align_torch(work, "init", "model")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (work / "model").iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    again = align_torch(work, "init", "model")
    assert again.returncode == 2 and "not an empty folder" in again.stderr and "Traceback" not in again.stderr

    labels = ["a red square", "a green square"]
    done = align_torch(work, "zero-shot", "photos/red.png", "--labels", *labels, "--model", "model", "--json")
    assert done.returncode == 0, done.stderr
    predictions = json.loads(done.stdout)["results"][0]["predictions"]
    assert sorted(p["label"] for p in predictions) == sorted(labels)
    assert sum(p["prob"] for p in predictions) == pytest.approx(1.0, abs=1e-5)

    done = align_torch(work, "embed", "photos", "--out", "photos.safetensors", "--model", "model", "--workers", "0")
    assert done.returncode == 0, done.stderr
    done = align_torch(work, "search", "photos.safetensors", "a red square", "-k", "2", "--json")
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)["results"]

    # The same search in this process, unfused: the CLI found the two nearest photos with their scores.
    index = EmbeddingIndex.load(work / "photos.safetensors")
    model, processor = AlignModel.from_pretrained(work / "model"), AlignProcessor.from_pretrained(work / "model")
    with torch.no_grad():
        query = F.normalize(model.get_text_features(**processor(text=["a red square"])), dim=-1)[0]  # (P,)
    scores = index.vectors.float() @ query  # (N,)
    best = scores.topk(2)
    assert [h["item"] for h in hits] == [index.items[i] for i in best.indices]
    assert [h["score"] for h in hits] == pytest.approx(best.values.tolist(), abs=1e-4)
