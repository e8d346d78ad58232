"""How far an embeddings folder is: partitions finished, rows, skipped images, embedding rate."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .layout import FolderInfo, partition_files


@dataclass
class FolderStatus:
    info: FolderInfo
    finished: int
    rows: int
    skipped: int
    seconds: float  # summed over finished partitions (each process's own time)
    ranks: int  # distinct ranks that wrote finished partitions

    @property
    def images_per_second(self) -> float:
        """Per process: rows and skipped images over the time spent on them."""
        return (self.rows + self.skipped) / self.seconds if self.seconds > 0 else 0.0

    def describe(self, folder: str) -> str:
        info = self.info
        if info.partition_unit == "row groups":  # Parquet: cut at row groups, so sizes vary
            unit = f"row groups, up to {info.partition_size} rows each"
        else:
            unit = "shards" if info.partition_unit == "shard" else _sizes(info.input_items, info.partition_size or 1)
        lines = [
            f"{folder}: {self.finished}/{info.partitions} partitions finished ({unit}), "
            f"{self.rows} rows, {self.skipped} unreadable images skipped",
            f"model {info.model}, {info.dim}-d {info.dtype}, text embeddings: {'yes' if info.captions else 'no'}",
        ]
        if self.finished:
            lines.append(f"{self.images_per_second:.1f} images/s per process, written by {self.ranks} rank(s)")
        return "\n".join(lines)


def _sizes(items: int, size: int) -> str:
    """The partitions' sizes as they are: '3 images each', '3 images each, the last 1', or '2 images' for one."""
    if items <= size:
        return f"{items} image{'s' if items != 1 else ''}"
    last = items % size
    return f"{size} images each" + (f", the last {last}" if last else "")


def folder_status(folder: str | os.PathLike) -> FolderStatus:
    """Read embeddings.json and the completion markers (never the embeddings)."""
    info = FolderInfo.load(folder)
    finished = rows = skipped = 0
    seconds = 0.0
    ranks: set[int] = set()
    for i in range(info.partitions):
        marker = partition_files(folder, i, info)["done"]
        if marker.is_file():
            done = _read_marker(marker)
            finished += 1
            rows += done["rows"]
            skipped += len(done["skipped"])
            seconds += done["seconds"]
            ranks.add(done["rank"])
    return FolderStatus(info, finished, rows, skipped, seconds, len(ranks))


def _read_marker(path: os.PathLike) -> dict:
    """A completion marker with its counts checked (they are summed into the status)."""
    from .layout import EmbeddingsFolderError

    try:
        done = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EmbeddingsFolderError(f"{str(path)!r} is not a readable completion marker: {e}") from None
    if not isinstance(done, dict):
        raise EmbeddingsFolderError(f"{str(path)!r} is not a completion marker (not a JSON object)")
    checks = {
        "rows": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "skipped": lambda v: isinstance(v, list),
        "seconds": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
        "rank": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    }
    for name, ok in checks.items():
        if not ok(done.get(name)):
            raise EmbeddingsFolderError(f"{str(path)!r} is damaged: {name} is {done.get(name)!r}")
    return done
