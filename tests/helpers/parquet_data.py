"""Parquet stand-ins for the data layouts users bring, built from real photos (skimage.data): the Hugging Face
Hub's (datasets' `Image` struct `{bytes, path}`, a list of captions, a `split` column, as Flickr30k and COCO
captions are published) and img2dataset's (raw `jpg` bytes, a `txt` caption, `key`, `url`)."""

from __future__ import annotations

import io
from pathlib import Path

import PIL.Image

from tests.helpers.export_data import photos

SPLITS = ("train", "train", "val", "test")  # row i has split SPLITS[i % 4]


def photo_jpegs(n: int, size: int = 96) -> list[bytes]:
    """`n` (at most 17) distinct real photos as JPEG bytes, `size` pixels on the longer side."""
    out = []
    for image in photos(n):
        image.thumbnail((size, size), PIL.Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def captions_of(i: int, k: int = 3) -> list[str]:
    return [f"photo {i} caption {j}" for j in range(k)]


def write_files(folder: Path, jpegs: list[bytes]) -> list[Path]:
    """The same images as files, named so that sorting keeps the rows' order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:03d}.jpg" for i in range(len(jpegs))]
    for path, data in zip(paths, jpegs, strict=True):
        path.write_bytes(data)
    return paths


def write_hub_layout(path: Path, jpegs: list[bytes], row_group_size: int = 4, captions_per_row: int = 3) -> Path:
    """datasets' layout: image {bytes, path}, caption (list of strings), split, img_id, filename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "image": pa.array([{"bytes": b, "path": f"{i:03d}.jpg"} for i, b in enumerate(jpegs)], image_type),
            "caption": [captions_of(i, captions_per_row) for i in range(len(jpegs))],
            "split": [SPLITS[i % len(SPLITS)] for i in range(len(jpegs))],
            "img_id": [str(1000 + i) for i in range(len(jpegs))],
            "filename": [f"{i:03d}.jpg" for i in range(len(jpegs))],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_img2dataset_layout(path: Path, jpegs: list[bytes], row_group_size: int = 4) -> Path:
    """img2dataset's Parquet output: key, jpg (bytes), txt, url, width, height."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sizes = [PIL.Image.open(io.BytesIO(b)).size for b in jpegs]
    table = pa.table(
        {
            "key": [f"{i:09d}" for i in range(len(jpegs))],
            "jpg": pa.array(jpegs, pa.binary()),
            "txt": [captions_of(i, 1)[0] for i in range(len(jpegs))],
            "url": [f"https://example.com/{i}.jpg" for i in range(len(jpegs))],
            "width": [w for w, _ in sizes],
            "height": [h for _, h in sizes],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path
