"""Synthetic image-caption data for the training tests: coloured shapes on a light background, captioned
"a red circle". Nine classes a tiny model can learn on a CPU in seconds."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220)}
SHAPES = ("circle", "square", "triangle")
CLASSES = [f"{c} {s}" for c in COLOURS for s in SHAPES]


def shape_image(colour: str, shape: str, rng: random.Random, size: int = 64) -> Image.Image:
    """One shape of random size and position; background and colour jittered so no two images are equal."""
    bg = tuple(rng.randint(215, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in COLOURS[colour])
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def write_shapes_manifest(folder: Path, n: int, seed: int = 0, name: str = "train.csv") -> Path:
    """n images (cycling through the 9 classes) under folder/images and a CSV manifest with relative paths."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = CLASSES[i % len(CLASSES)]
        colour, shape = label.split()
        rel = f"images/{name.split('.')[0]}_{i:04d}.png"
        shape_image(colour, shape, rng).save(folder / rel)
        rows.append({"image": rel, "caption": f"a {label}"})
    manifest = folder / name
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def write_shapes_classes(folder: Path, per_class: int, seed: int = 1) -> Path:
    """A class-per-folder dataset: folder/red_circle/*.png, ... (underscores read as spaces)."""
    rng = random.Random(seed)
    for label in CLASSES:
        colour, shape = label.split()
        sub = folder / label.replace(" ", "_")
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape_image(colour, shape, rng).save(sub / f"{i:03d}.png")
    return folder


def shapes_run(model_dir: Path, root: Path, manifest: Path | None = None, **options: Any):
    """A TrainConfig that fine-tunes `model_dir` on `manifest` (by default 8 shapes written under root/data) into
    root/run, in batches of 4, without a progress bar; `options` add to these or override them."""
    from align_torch.train import TrainConfig

    if manifest is None:
        manifest = write_shapes_manifest(root / "data", 8)
    base = {"model": str(model_dir), "train": str(manifest), "out": str(root / "run"), "batch_size": 4}
    return TrainConfig(**{**base, "progress": False, **options})
