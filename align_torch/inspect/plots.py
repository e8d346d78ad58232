"""Figures without matplotlib (a test-only dependency): a CKA matrix and a bar chart, drawn with PIL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from .heatmap import colorize

if TYPE_CHECKING:
    from .compare import CkaMatrix


def draw_matrix(matrix: CkaMatrix, title: str, cell: int = 34) -> Image.Image:
    """The CKA matrix as an image: rows are model A's sites, columns model B's, blue 0 to red 1, the value in
    each cell, the site names beside (rows) and below (columns, numbered in the legend)."""
    values = np.clip(np.nan_to_num(np.asarray(matrix.values, dtype=np.float32)), 0.0, 1.0)
    rows, cols = values.shape
    label_w = 8 + 7 * max(len(s) for s in matrix.sites_a)
    legend = [f"{j}: {s}" for j, s in enumerate(matrix.sites_b)]
    top, bottom = 24, 22 + 14 * len(legend)
    width = max(label_w + cols * cell + 8, 8 + 7 * max(len(t) for t in [title, *legend]))
    image = Image.new("RGB", (width, top + rows * cell + bottom), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), title, fill="black")
    colours = colorize(values)  # (rows, cols, 3)
    for i in range(rows):
        draw.text((4, top + i * cell + cell // 3), matrix.sites_a[i], fill="black")
        for j in range(cols):
            x, y = label_w + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=tuple(int(c) for c in colours[i, j]))
            draw.text((x + 3, y + cell // 3), f"{matrix.values[i][j]:.2f}", fill="black")
    y = top + rows * cell + 4
    for j in range(cols):
        draw.text((label_w + j * cell + cell // 3, y), str(j), fill="black")
    for k, line in enumerate(legend):
        draw.text((4, y + 16 + 14 * k), line, fill="black")
    return image


def draw_bars(bars: list[tuple[str, float]], title: str, top: float, width: int = 300) -> Image.Image:
    """One horizontal bar per (label, value), scaled so `top` fills `width` px, the value written beside it."""
    label_w = 8 + 7 * max(len(label) for label, _ in bars)
    row = 20
    image = Image.new("RGB", (max(label_w + width + 70, 8 + 7 * len(title)), 28 + row * len(bars)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), title, fill="black")
    for k, (label, value) in enumerate(bars):
        y = 24 + k * row
        draw.text((4, y + 4), label, fill="black")
        length = int(round(width * min(max(value / top, 0.0), 1.0)))
        draw.rectangle([label_w, y + 2, label_w + max(length, 1), y + row - 4], fill=(70, 110, 200))
        draw.text((label_w + length + 6, y + 4), f"{value:.1f}", fill="black")
    return image
