"""`read_pairs` picks the reader (manifest or shards) from its argument; `load_pair_image` reads either kind."""

from __future__ import annotations

import os
from pathlib import Path

import PIL.Image

from .images import load_image
from .manifest import MANIFEST_SUFFIXES, read_manifest
from .samples import PairList, TarMember
from .shards import expand_shards, load_tar_image, read_shards


def read_pairs(spec: str | os.PathLike, require_caption: bool = True) -> PairList:
    """A manifest file (.csv/.tsv/.jsonl/.parquet) or WebDataset shards (a .tar, a folder of .tar, a glob, or a
    brace range such as `shards/{00000..00009}.tar`) -> image-caption pairs.

    With `require_caption` (fine-tuning) samples without a caption are left out and counted; without it
    (embedding) every image is kept and a missing caption is None."""
    text = os.fspath(spec)
    if text.endswith(MANIFEST_SUFFIXES):
        return read_manifest(text, require_caption=require_caption)
    shards = expand_shards(text)
    if not shards:
        raise FileNotFoundError(
            f"{text!r} is neither a manifest ({', '.join(MANIFEST_SUFFIXES)}) nor .tar shards that exist"
        )
    return read_shards(shards, require_caption=require_caption)


def load_pair_image(image: Path | TarMember) -> PIL.Image.Image:
    """The RGB image of a pair (EXIF orientation applied); ImageLoadError when it cannot be read."""
    return load_image(image) if isinstance(image, Path) else load_tar_image(image)
