"""docs/internals.md's two Python blocks run as written, one after the other in one namespace, on the tiny
checkpoint (photo-sensitive BatchNorm statistics) standing where the page's `starter` folder stands: the first
block defines `model`, `pv`, `ids` and `mask` from scikit-image's photos, the second uses them."""

from __future__ import annotations

import re
from pathlib import Path

import torch

PAGE = Path(__file__).resolve().parents[2] / "docs" / "internals.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def test_the_internals_blocks_run_as_written(model_dir, tmp_path, monkeypatch):
    (tmp_path / "starter").symlink_to(model_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    looking, internals = python_blocks()[:2]
    assert "pv, ids, mask = " in looking, "the first block must define the names the others use"
    namespace: dict = {}
    exec(compile(looking, str(PAGE), "exec"), namespace)
    model = namespace["model"]
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    exec(compile(internals, str(PAGE), "exec"), namespace)
    assert namespace["pv"].shape[0] == 4 and namespace["heat"].shape[0] == 4
    assert namespace["result"].patched.shape == (4,)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == before
    assert torch.isfinite(namespace["deletion"].auc).all()
