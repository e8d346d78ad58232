"""Inputs for the export tests: 17 real photos (skimage.data, installed with scikit-image) and held-out captions."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import PIL.Image

# Colour photos, then grey ones (given three equal channels): every image skimage ships without a download.
COLOUR = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
GREY = ("camera", "brick", "grass", "gravel", "coins", "moon", "page", "text", "horse")
CAPTION_WORDS = (
    "a photo of the small large red blue green old young dog cat cup coffee rocket man woman child street "
    "beach mountain lake city night sunny snowy kitchen table bicycle car train bridge garden flower tree bird "
    "boat harbour market window book plate bread two three standing sitting running next to under on in near"
).split()


def photos(n: int = 17) -> list[PIL.Image.Image]:
    """`n` (at most 17) real photos as RGB PIL images, the colour ones first; the 17th is a mirrored astronaut."""
    import skimage.data

    out = []
    for name in COLOUR + GREY:
        array = np.asarray(getattr(skimage.data, name)())
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        out.append(PIL.Image.fromarray(array).convert("RGB"))
    out.append(out[0].transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT))
    return out[:n]


def photo_files(folder: Path, n: int = 17, suffixes: tuple[str, ...] = ("jpg",), scale: int = 1) -> list[Path]:
    """The first `n` photos written to `folder` as 00.<suffix>, 01.<suffix>, ... (the suffixes taken in turn; JPEG
    at quality 90), enlarged `scale` times (a camera's photo is larger than skimage's 300-600 pixels)."""
    paths = []
    for i, image in enumerate(photos(n)):
        if scale > 1:
            image = image.resize((image.width * scale, image.height * scale), PIL.Image.Resampling.LANCZOS)
        paths.append(folder / f"{i:02d}.{suffixes[i % len(suffixes)]}")
        image.save(paths[-1], **({"quality": 90} if paths[-1].suffix == ".jpg" else {}))
    return paths


def captions(n: int, seed: int = 0) -> list[str]:
    """`n` held-out captions of 2 to 40 words (longer ones reach the tiny tokenizer's 64 tokens)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(CAPTION_WORDS) for _ in range(rng.randint(2, 40))) for _ in range(n)]


def spread_text_weights_(model, seed: int = 0) -> None:
    """Re-initialise the text tower and projection so that different captions get clearly different embeddings.

    The tests' randomised checkpoints give every caption nearly the same text embedding (mean pairwise cosine
    0.99999), where any rounding keeps the cosine to fp32 near 1 whatever it does to what tells captions apart.
    Unit-variance token embeddings, 1/sqrt(fan_in) linear weights and no biases spread them out.
    """
    import math

    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in [*model.text_model.modules(), model.text_projection]:
            if isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g))
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) / math.sqrt(module.in_features))
                module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
