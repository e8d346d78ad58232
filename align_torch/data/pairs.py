"""`read_pairs` picks the reader (manifest, Parquet, WebDataset shards, Python rows) from its argument;
`load_pair_image` reads any kind of image reference."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import PIL.Image

from ..util.fileio import path_to_text
from .images import has_images, load_image
from .manifest import MANIFEST_SUFFIXES, read_manifest
from .parquet import PARQUET_SUFFIX, Selection, expand_parquet, is_parquet_folder, load_parquet_image, read_parquet
from .rows import is_rows, load_memory_image, read_rows
from .samples import ImageRef, MemoryImage, PairList, ParquetImage, TarMember
from .shards import expand_shards, load_tar_image, read_shards


def is_parquet(spec: str | os.PathLike | Sequence) -> bool:
    """A .parquet file or glob, a folder holding .parquet files (and no .tar, and no image files: a folder of
    images with a metadata table beside them is a folder of images), or a list of such."""
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        path = Path(text).expanduser()
        if path.is_dir():
            return is_parquet_folder(path) and not any(path.glob("*.tar")) and not has_images(path)
        return text.endswith(PARQUET_SUFFIX)
    return bool(spec) and all(isinstance(s, (str, os.PathLike)) and is_parquet(s) for s in spec)


def read_pairs(
    spec: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Mapping],
    require_caption: bool = True,
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    split: str | None = None,
    captions_per_image: int | None = None,
) -> PairList:
    """Image-caption pairs from a manifest (.csv/.tsv/.jsonl), Parquet (a .parquet file, a folder of them, a glob,
    a list of them: images inside or a path column), WebDataset shards (a .tar, a folder of .tar, a glob, or a
    brace range such as `shards/{00000..00009}.tar`), or a sequence of mappings such as a `datasets.Dataset`.

    With `require_caption` (fine-tuning) samples without a caption are left out and counted, and a row with a
    list of captions gives one pair per caption; without it (embedding) every image is kept once, with its first
    caption or None. `split` keeps the Parquet rows (or mappings) whose `split` column equals it;
    `captions_per_image` keeps a row's first N captions (retrieval's protocol: 5)."""
    select = Selection.of(require_caption, split, captions_per_image)
    if is_rows(spec):
        return read_rows(spec, select, image_column, caption_column)
    if is_parquet(spec):
        shards = expand_parquet(spec)
        if not shards:
            raise FileNotFoundError(f"no Parquet files match {os.fspath(spec) if isinstance(spec, str) else spec}")
        return read_parquet(shards, select, image_column, caption_column)
    text = os.fspath(spec)
    if text.endswith(MANIFEST_SUFFIXES):
        return read_manifest(text, require_caption=require_caption)
    shards = expand_shards(text)
    if not shards:
        raise FileNotFoundError(
            f"{text!r} is neither a manifest ({', '.join(MANIFEST_SUFFIXES)}) nor .parquet or .tar shards that exist"
        )
    return read_shards(shards, require_caption=require_caption)


def load_pair_image(image: ImageRef, draft: tuple[int, int] | None = None) -> PIL.Image.Image:
    """The RGB image of a pair (EXIF orientation applied; `draft`: load_image's); ImageLoadError when it cannot be
    read."""
    if isinstance(image, TarMember):
        return load_tar_image(image, draft)
    if isinstance(image, ParquetImage):
        return load_parquet_image(image, draft)
    if isinstance(image, MemoryImage):
        return load_memory_image(image, draft)
    return load_image(image, draft)


def image_name(image: ImageRef) -> str:
    """An image as text, for reports and metadata: its path, `SHARD.tar:MEMBER`, `SHARD.parquet:ROW`, `row ROW`."""
    if isinstance(image, TarMember):
        return path_to_text(os.fsencode(image.shard) + b":" + os.fsencode(image.name))
    if isinstance(image, ParquetImage):
        return path_to_text(os.fsencode(image.shard) + f":{image.index}".encode())
    if isinstance(image, MemoryImage):
        return f"row {image.index}"
    return path_to_text(image)
