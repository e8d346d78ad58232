"""The README's "Studying the internals" block runs as written, on the tiny checkpoint with real photos."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from align_torch import AlignModel, AlignProcessor
from tests.helpers.job_data import photo

README = Path(__file__).resolve().parents[2] / "README.md"


def internals_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Studying the internals") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_block_runs(model_dir):
    model = AlignModel.from_pretrained(model_dir)
    processor = AlignProcessor.from_pretrained(model_dir)
    names = ("chelsea", "coffee", "astronaut", "rocket")
    inputs = processor(
        text=["a cat", "a cup of coffee", "an astronaut", "a rocket"], images=[photo(n) for n in names], padding=True
    )
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    namespace = {
        "model": model,
        "pv": inputs["pixel_values"],
        "ids": inputs["input_ids"],
        "mask": inputs["attention_mask"],
    }
    exec(compile(internals_block(), str(README), "exec"), namespace)
    assert namespace["result"].patched.shape == (4,)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == before
    assert torch.isfinite(namespace["deletion"].auc).all()
