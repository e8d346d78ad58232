"""Run metrics: one JSON object per line in metrics.jsonl, mirrored to TensorBoard when it is installed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends records to `folder/metrics.jsonl` (kept across resumes) and, if `tensorboard` imports, to
    `folder/tensorboard`. Only the main rank should create one."""

    def __init__(self, folder: str | os.PathLike, tensorboard: bool = True) -> None:
        self.path = Path(folder) / "metrics.jsonl"
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
