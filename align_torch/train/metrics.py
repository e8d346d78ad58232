"""Run metrics: one JSON object per line in metrics.jsonl, mirrored to TensorBoard when it is installed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..util.fileio import atomic_file

METRICS_FILE = "metrics.jsonl"


def drop_records_after(folder: str | os.PathLike, step: int, epoch: int, *, eval_pending: bool = False) -> int | None:
    """Keep only the records of `folder/metrics.jsonl` at or before (step, epoch), the point a run restarts
    from, so the steps it runs again are not written twice (a torn last line goes too). `eval_pending`: the
    checkpoint was saved after the last batch of an epoch but before that epoch's evaluation, so an evaluation
    at `step` is dropped (it runs again). Returns the step of the last evaluation kept, if any."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    kept, last_eval = [], None
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # torn by a crash mid-write: the step runs again
            raise ValueError(f"{path}, line {number}: not JSON; fix or delete the line to resume") from None
        at = _position(path, number, record)
        if record["type"] == "eval":
            keep = at[0] < step or (at[0] == step and not eval_pending)
        else:
            keep = at <= (step, epoch)
        if keep:
            kept.append(line)
            if record["type"] == "eval":
                last_eval = at[0]
    with atomic_file(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    return last_eval


def _position(path: Path, number: int, record: object) -> tuple[int, int]:
    """(step, epoch) of one metrics.jsonl record, checked: an object of type train or eval, whole numbers >= 0."""
    where = f"{path}, line {number}"
    if not isinstance(record, dict) or record.get("type") not in ("train", "eval"):
        raise ValueError(f"{where}: not a train or eval record; fix or delete the line to resume")
    for field in ("step", "epoch"):
        value = record.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}: {field} must be a whole number >= 0, got {value!r}; fix or delete the line")
    return record["step"], record["epoch"]


class MetricsLogger:
    """Appends records to `folder/metrics.jsonl` (kept across resumes) and, if `tensorboard` imports, to
    `folder/tensorboard`. Only the main rank should create one."""

    def __init__(self, folder: str | os.PathLike, tensorboard: bool = True) -> None:
        self.path = Path(folder) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass  # TensorBoard is optional; metrics.jsonl has everything
            else:
                self._tb = SummaryWriter(str(Path(folder) / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        """Write one record; numeric fields other than `step` also go to TensorBoard at that step."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record.get("step", 0))

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
