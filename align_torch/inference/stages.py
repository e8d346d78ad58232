"""Where an embedding job's time goes (`embed --profile`): seconds per stage.

The loading stages (decode, resize, normalise, collate) run in the DataLoader workers, overlapping the model, and
are summed over workers; the main process's stages (waiting for a batch of images, the model, writing) add up to
its wall time. A job whose `wait` is large is bound by loading (more workers, `--draft-decode`); one whose
`model` is most of the wall time runs at the model's own speed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..data.images import ImageBatch

LOADING = ("decode", "resize", "normalise", "preprocess", "collate")
MAIN = ("wait", "model", "write")


@dataclass
class StageClock:
    """Seconds per stage, summed over the batches of a job."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def add_all(self, seconds: dict[str, float]) -> None:
        for stage, t in seconds.items():
            self.add(stage, t)

    @contextlib.contextmanager
    def time(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def timed_batches(self, loader: Iterable[ImageBatch]) -> Iterator[ImageBatch]:
        """The loader's batches, timing the wait for each and adding the loading stages its items took."""
        batches = iter(loader)
        while True:
            with self.time("wait"):
                batch = next(batches, None)
            if batch is None:
                return
            self.add_all(batch.seconds)
            yield batch

    def describe(self, images: int, workers: int) -> str:
        """One line per side: 'loading (2 workers): decode 3.10 s, ...' and 'main process: wait 0.20 s, ...'."""
        where = f"{workers} worker{'s' if workers != 1 else ''}" if workers else "in the main process"
        lines = []
        for title, stages in ((f"loading ({where})", LOADING), ("main process", MAIN)):
            parts = [f"{s} {self.seconds[s]:.2f} s" for s in stages if s in self.seconds]
            if parts:
                lines.append(f"{title}: {', '.join(parts)}")
        per = sum(self.seconds.get(s, 0.0) for s in MAIN) / images if images else 0.0
        lines.append(f"{images} images, {per * 1000:.0f} ms per image in the main process")
        return "\n".join(lines)
