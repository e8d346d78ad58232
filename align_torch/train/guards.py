"""When a run must stop: non-finite numbers, too many unreadable images, or Ctrl-C (at a step boundary, so
the checkpoint it leaves resumes exactly)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterable, Iterator

import torch

from .state import Progress

# Once this many images of an epoch were tried and none could be read, the data is broken: stop at once.
EARLY_CHECK_IMAGES = 256
EXAMPLES_SHOWN = 3


class NonFiniteLossError(RuntimeError):
    """The loss, gradients or weights became NaN or infinite; nothing was written after the last good checkpoint."""


class UnreadableDataError(ValueError):
    """Too many of an epoch's images could not be read (wrong paths in a manifest, broken shards)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run at a step boundary, after saving a checkpoint that resumes exactly."""


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite (one reduction, one device sync)."""
    # A sharded (FSDP) tensor is checked by its local shard; the caller reduces the answer over ranks.
    tensors = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    tensors = [t.detach() for t in tensors if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors, norm_type=float("inf"))))


def check_unreadable(
    progress: Progress, *, source: str, max_fraction: float, epoch_images: int, examples: list[str]
) -> None:
    """Raise UnreadableDataError when this epoch's unreadable images already exceed `max_fraction` of the
    epoch, or when none of at least EARLY_CHECK_IMAGES (or of the whole epoch) could be read."""
    seen, bad = progress.epoch_images, progress.epoch_unreadable
    if bad == 0:
        return
    shown = "; ".join(examples[:EXAMPLES_SHOWN]) or "see the other ranks"
    if bad == seen and seen >= min(EARLY_CHECK_IMAGES, epoch_images):
        raise UnreadableDataError(
            f"none of the {seen} images tried in epoch {progress.epoch} (0-based) could be read from {source}, e.g. {shown}"
        )
    if bad > max_fraction * epoch_images:
        raise UnreadableDataError(
            f"{bad} of the {seen} images tried so far in epoch {progress.epoch} (0-based) could not be read from "
            f"{source}: more than --max-unreadable-fraction {max_fraction:g} of the epoch's {epoch_images}; "
            f"e.g. {shown}"
        )


class StopRequest:
    """A flag that Ctrl-C (SIGINT) raises and the training loop reads at its next step boundary; a second
    Ctrl-C stops at once, without saving."""

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        self.requested = True

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "stopping after this step to save a checkpoint (Ctrl-C again stops now, without saving)",
            file=sys.stderr,
            flush=True,
        )

    @contextlib.contextmanager
    def on_sigint(self) -> Iterator[None]:
        """Route SIGINT to this flag while inside (signal handlers can only be set in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def ignore_sigint(worker_id: int) -> None:
    """DataLoader worker_init_fn: Ctrl-C reaches the whole process group; only the main process acts on it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
