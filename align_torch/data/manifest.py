"""Manifests: a table with an `image` column (paths relative to the manifest's folder, or absolute) and an
optional `caption` column, as CSV, TSV or JSON lines; a Parquet manifest is read by the Parquet reader
(parquet.py), which also reads images stored inside the table."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from .parquet import PARQUET_SUFFIX, Selection, read_parquet
from .samples import Pair, PairList

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


def read_manifest(path: str | os.PathLike, require_caption: bool = True) -> PairList:
    """Rows with `image` and, when `require_caption`, a non-empty `caption`.

    With `require_caption` rows with an empty caption are counted in `skipped_empty_captions` and left out;
    without it the caption column is optional and an empty caption is None."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {str(path)!r} does not exist")
    if path.suffix == PARQUET_SUFFIX:
        return read_parquet([path], Selection.of(require_caption))
    rows = _read_rows(path)
    needed = ("image", "caption") if require_caption else ("image",)
    pairs, empty = [], 0
    for i, row in enumerate(rows):
        missing = [k for k in needed if k not in row]
        if missing:
            raise ValueError(f"{path}: row {i + 1} has no {' or '.join(missing)} column (found {sorted(row)})")
        caption = str(row.get("caption") or "").strip()
        if not caption and require_caption:
            empty += 1
            continue
        if not row["image"]:
            raise ValueError(f"{path}: row {i + 1} has an empty image path")
        image = Path(str(row["image"])).expanduser()
        pairs.append(Pair(image if image.is_absolute() else path.parent / image, caption or None))
    if not pairs:
        what = "both an image and a non-empty caption" if require_caption else "an image"
        raise ValueError(f"{path}: no rows with {what}")
    return PairList(pairs, empty)


def _read_rows(path: Path) -> list[dict]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line} is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); manifests are read as "
            "UTF-8: save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    with io.StringIO(text, newline="") as f:
        if path.suffix == ".jsonl":
            rows = []
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}: line {i + 1} is not JSON ({e})") from None
                    if not isinstance(row, dict):
                        raise ValueError(f"{path}: line {i + 1} is not a JSON object")
                    rows.append(row)
            return rows
        return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
