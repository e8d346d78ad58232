"""The README's quick start and docs/commands.md name every preset `align-torch init --preset` takes: by name, or
through the grid pattern `align-{b1..b7,l2}-bert-{...}` they print, expanded here."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from align_torch.train.starter import STARTER_PRESETS

ROOT = Path(__file__).resolve().parents[2]


def _expand(part: str) -> list[str]:
    """ "b1..b7,l2" -> b1 b2 ... b7 l2; "mini,small" -> mini small."""
    out: list[str] = []
    for item in part.split(","):
        ends = re.fullmatch(r"([a-z]+)(\d+)\.\.\1(\d+)", item)
        out += [f"{ends[1]}{i}" for i in range(int(ends[2]), int(ends[3]) + 1)] if ends else [item]
    return out


def named_presets(text: str) -> set[str]:
    names = set(re.findall(r"align-[a-z0-9]+(?:-bert-[a-z]+)?", text))
    for vision, text_size in re.findall(r"align-\{([^}]+)\}-bert-\{([^}]+)\}", text):
        names |= {f"align-{v}-bert-{t}" for v, t in itertools.product(_expand(vision), _expand(text_size))}
    return names


@pytest.mark.parametrize("page", ["README.md", "docs/commands.md"])
def test_every_init_preset_is_named(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    if page == "README.md":
        text = text[text.index("## Quick start") :]
        text = text[: text.index("\n## ", 1)]
    missing = sorted(set(STARTER_PRESETS) - named_presets(text))
    assert missing == [], f"{page} does not name these init presets: {missing}"
