"""One run per folder: a lock file naming the holder (pid, host), taken over only when its holder is a dead
process on this host."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from ..util.fileio import pid_alive

LOCK_FILE = "run.lock"


class RunLockedError(FileExistsError):
    """Another run holds the folder's lock."""


def _holder(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def acquire_run_lock(folder: str | os.PathLike) -> Path:
    """Create `folder/run.lock` naming this process; RunLockedError if a live run holds it. A lock left by a
    dead process on this host is taken over, with a note on stderr."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:
                if not path.exists():
                    continue  # released between our two looks
                raise RunLockedError(
                    f"{path} exists but does not name a run; if no run uses {folder}, delete it and start again"
                ) from None
            if holder.get("host") != me["host"] or pid_alive(holder["pid"]):
                raise RunLockedError(
                    f"{folder} is in use by pid {holder['pid']} on {holder.get('host')} (since {holder.get('since')}); "
                    f"wait for it, or if that run is gone, delete {path}"
                ) from None
            stale = path.with_name(f"{path.name}.stale-{os.getpid()}")
            try:
                os.rename(path, stale)
            except FileNotFoundError:
                continue
            moved = _holder(stale)
            if moved != holder:  # another run took the stale lock over first: give it back
                try:
                    os.link(stale, path)
                except FileExistsError:
                    pass
                stale.unlink()
                continue
            stale.unlink()
            print(f"note: took over {path} left by pid {holder['pid']}, which is no longer running", file=sys.stderr)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return path
    raise RunLockedError(f"could not take {path}: other runs keep changing it")


def release_run_lock(path: Path) -> None:
    """Remove the lock if it is still this process's."""
    holder = _holder(path)
    if holder is not None and holder["pid"] == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
