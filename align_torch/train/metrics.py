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
    kept, last_eval = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        at = (record.get("step", 0), record.get("epoch", 0))
        if record.get("type") == "eval":
            keep = at[0] < step or (at[0] == step and not eval_pending)
        else:
            keep = at <= (step, epoch)
        if keep:
            kept.append(line)
            if record.get("type") == "eval":
                last_eval = record.get("step")
    with atomic_file(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    return last_eval


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
