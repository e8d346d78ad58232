"""run/skipped.jsonl: each training image that could not be read, named once (not once per epoch), with the
error, across ranks and resumes. The per-epoch counts that stop a run on broken data live in guards.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from ..data import MemoryImage, Pair, ParquetImage, TarMember
from ..util.fileio import atomic_file, path_to_text

SKIPPED_FILE = "skipped.jsonl"


def skipped_record(pair: Pair, error: str) -> dict[str, str]:
    """The line for one unreadable image: its file (as Unicode text), the tar member or Parquet row when it is one,
    the error."""
    if isinstance(pair.image, TarMember):
        return {"path": path_to_text(pair.image.shard), "member": pair.image.name, "error": error}
    if isinstance(pair.image, ParquetImage):
        return {"path": path_to_text(pair.image.shard), "member": f"row {pair.image.index}", "error": error}
    if isinstance(pair.image, MemoryImage):
        return {"path": f"row {pair.image.index}", "error": error}
    return {"path": path_to_text(pair.image), "error": error}


def _key(record: dict) -> tuple[str, str | None]:
    return record["path"], record.get("member")


class SkippedLog:
    """Appends, line-buffered, a record per unreadable file not named before (by this run or the one it
    resumes). Only the main rank should create one; the other ranks' failures are gathered to it."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / SKIPPED_FILE
        self._seen: set[tuple[str, str | None]] = set()
        if self.path.is_file():
            text = self.path.read_text(encoding="utf-8")
            kept = []
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                    self._seen.add(_key(record))
                except (json.JSONDecodeError, TypeError, KeyError):
                    continue  # a line torn by a kill
                kept.append(line)
            if text and (not text.endswith("\n") or len(kept) != len(text.splitlines())):
                with atomic_file(self.path) as tmp:  # so the next line does not join a torn one
                    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        self._file: TextIO | None = None  # opened at the first record: a run that read every image has no log

    def add(self, records: Iterable[dict[str, str]]) -> int:
        """Write the records whose file is not in the log yet; returns how many were new."""
        new = 0
        for record in records:
            if _key(record) in self._seen:
                continue
            self._seen.add(_key(record))
            if self._file is None:
                self._file = self.path.open("a", encoding="utf-8", buffering=1)
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            new += 1
        return new

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
