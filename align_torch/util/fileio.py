"""Safe writes and lossless file names.

- An output appears whole or not at all: it is written under a temporary name beside its destination and
  renamed into place. A folder that already exists is swapped with the new one in a single
  `renameat2(RENAME_EXCHANGE)` where Linux offers it, so the destination path never goes missing.
- Nothing a user owns is replaced: an existing non-empty folder is replaced only when asked (`overwrite`) and
  only when the caller's test says it is one of ours (e.g. a checkpoint), never when it holds the working
  directory or a path the caller protects.
- Outputs follow the umask, even when a writer (safetensors) creates its file private.
- Temporary names read `.NAME.align-torch-tmp-HOST-PID-RANDOM` (folders also hold a marker file); the next
  write to the same destination removes those whose process is gone, and reports those it cannot prove ours.
- `path_to_text` / `text_to_path` carry any file name the OS gives (bytes that are not UTF-8, newlines)
  through text formats (JSON, safetensors metadata, Parquet) and back, byte for byte.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import urllib.parse
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

TMP_TAG = "align-torch-tmp"
OLD_TAG = "align-torch-old"
MARKER = ".align-torch-partial"  # inside a temporary folder: {"pid", "host"} of the run that made it
_URI = "file:"


# --- permissions --------------------------------------------------------------------------------------
def current_umask() -> int:
    """The process umask (read without changing it for more than an instant)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give `path` (and, for a folder, everything under it) the mode a new file or folder gets under the umask:
    0o666 & ~umask for files (0o777 for executables and folders). Symbolic links are left alone."""
    mask = current_umask()
    path = Path(path)
    entries = [path] + (sorted(path.rglob("*")) if path.is_dir() and not path.is_symlink() else [])
    for entry in entries:
        st = entry.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        full = 0o777 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0o666
        os.chmod(entry, full & ~mask)


def check_readable(path: str | os.PathLike, what: str, error: type[Exception]) -> Path:
    """`path` as a Path if it is a file that can be read; otherwise raise `error`, naming `what` and why."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist")
    reason = unreadable_reason(path)
    if reason is not None:
        raise error(f"cannot read {what} {str(path)!r}: {reason}")
    return path


def unreadable_reason(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be opened for reading ("permission denied", "does not exist", ...), or None if it can.

    Libraries that open files themselves may report a permission problem as a missing file; ask first."""
    try:
        with open(path, "rb"):
            return None
    except FileNotFoundError:
        return "does not exist"
    except PermissionError:
        return "permission denied"
    except IsADirectoryError:
        return "is a folder, not a file"
    except OSError as e:
        return e.strerror or str(e)


# --- file names as text -------------------------------------------------------------------------------
def path_to_text(path: str | bytes | os.PathLike) -> str:
    """A file name as valid Unicode text, losslessly (`text_to_path` gives back the same bytes).

    A name that is valid UTF-8 stays as it is (spaces, newlines and all); any other name, and one that itself
    starts with "file:", becomes "file:" followed by its bytes percent-encoded ("/" kept), e.g.
    b"photos/\\xff.jpg" -> "file:photos/%FF.jpg"."""
    raw = os.fsencode(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not text.startswith(_URI):
        return text
    return _URI + urllib.parse.quote_from_bytes(raw, safe="/")


def text_to_path(text: str) -> str:
    """The file name that `path_to_text` turned into `text`; bytes that are not UTF-8 come back as surrogate
    escapes, as os.fsdecode gives them, so `os.fsencode(text_to_path(t))` is the original bytes."""
    if text.startswith(_URI):
        return os.fsdecode(urllib.parse.unquote_to_bytes(text[len(_URI) :]))
    return text


# --- temporary names and leftovers --------------------------------------------------------------------
def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _stem(path: Path) -> str:
    # Temporary names must stay under the 255-byte limit whatever the destination's name.
    return os.fsdecode(os.fsencode(path.name)[:150])


def _temp_path(path: Path, tag: str) -> Path:
    return path.parent / f".{_stem(path)}.{tag}-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (someone else's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove what an interrupted write to `path` left beside it, when provably ours: a temporary name of this
    machine whose process is gone (and, for a folder, that holds our marker). Anything else with a temporary
    name whose process is gone is kept and reported in a warning. Returns the removed paths."""
    path = Path(path)
    pattern = re.compile(
        rf"\.{re.escape(_stem(path))}\.({TMP_TAG}|{OLD_TAG})-(?P<host>[0-9a-f]{{8}})-(?P<pid>\d+)-[0-9a-f]{{8}}"
    )
    removed = []
    try:
        siblings = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in siblings:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        pid, same_host = int(match["pid"]), match["host"] == _host_tag()
        if same_host and (pid == os.getpid() or pid_alive(pid)):
            continue  # a write in progress
        leftover = Path(entry.path)
        if same_host and _is_our_leftover(leftover, pid):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
        else:
            where = "this machine" if same_host else "another machine"
            warnings.warn(
                f"{str(leftover)!r} was left by an interrupted align-torch write (process {pid} on {where}) and "
                "may hold an earlier version of the output; it was not removed, delete it if you do not need it",
                stacklevel=3,
            )
    return removed


def _is_our_leftover(leftover: Path, pid: int) -> bool:
    st = leftover.lstat()
    if stat.S_ISREG(st.st_mode):
        return True
    if not stat.S_ISDIR(st.st_mode):
        return False
    try:
        return json.loads((leftover / MARKER).read_text()).get("pid") == pid
    except (OSError, ValueError, AttributeError):
        return False


def _write_marker(folder: Path) -> None:
    (folder / MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")


def _remove_ours(folder: Path) -> None:
    """Remove a folder that now holds only what we replaced; marked first so a kill midway leaves a leftover
    that the next run may remove."""
    with contextlib.suppress(OSError):
        _write_marker(folder)
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():  # said, not left behind silently: it holds the replaced version's files
        warnings.warn(
            f"the replaced version could not be removed completely; what is left is at {str(folder)!r}", stacklevel=3
        )


# --- the destination check ----------------------------------------------------------------------------
def _contains(folder: Path, other: Path) -> bool:
    return other == folder or folder in other.parents


def check_destination(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    replaceable: Callable[[Path], bool] | None = None,
    what: str = "folder written by align-torch",
    protect: Iterable[str | os.PathLike] = (),
) -> None:
    """Raise unless writing a folder at `path` is safe: `path` is absent or an empty folder, or `overwrite` is
    set and `replaceable(path)` says it is one of ours (`what` names that kind in the message). A folder
    that is or contains the working directory or any `protect` path is never replaced; neither is a symbolic
    link or a file. Cheap: call it before long work, so a refusal comes first."""
    path = Path(path)
    if path.is_symlink():
        raise FileExistsError(f"{str(path)!r} is a symbolic link; name a new folder (or the real folder) instead")
    if not path.exists():
        return
    if not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} exists and is not a folder")
    real = Path(os.path.realpath(path))
    for kept, why in [(Path.cwd(), "the current working directory")] + [(Path(p), repr(str(p))) for p in protect]:
        if _contains(real, Path(os.path.realpath(kept))):
            raise FileExistsError(f"refusing to write {str(path)!r}: it is or contains {why}")
    if not any(path.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"{str(path)!r} exists and is not empty; choose a new folder, or overwrite it "
            f"(--overwrite; only a {what} is replaced)"
        )
    if replaceable is None or not replaceable(path):
        raise FileExistsError(f"refusing to overwrite {str(path)!r}: it is not a {what}")
    if not os.access(path, os.W_OK | os.X_OK):  # its old contents could not be removed once replaced
        raise PermissionError(f"cannot overwrite {str(path)!r}: the folder is read-only (permission denied)")


# --- atomic replacement -------------------------------------------------------------------------------
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE). False when the system or file system
    cannot; raises OSError for any other failure."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"could not swap {str(a)!r} and {str(b)!r}: {os.strerror(err)}")


def _replace_folder(new: Path, path: Path) -> None:
    """Put folder `new` at `path`, where a folder already is; the old one is removed once the new is in place."""
    if _exchange(new, path):
        _remove_ours(new)  # `new` now names the old folder
        return
    # No atomic swap: move the old folder aside under a name we can point to, then move the new one in.
    old = _temp_path(path, OLD_TAG)
    os.rename(path, old)
    try:
        os.rename(new, path)
    except OSError as e:
        try:
            os.rename(old, path)
        except OSError:
            raise OSError(
                e.errno,
                f"could not put the new {str(path)!r} in place ({e.strerror}); the previous "
                f"version is kept at {str(old)!r}",
            ) from e
        raise
    _remove_ours(old)


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    replaceable: Callable[[Path], bool] | None = None,
    what: str = "folder written by align-torch",
    protect: Iterable[str | os.PathLike] = (),
) -> Iterator[Path]:
    """Yield a new temporary folder beside `path` to fill; on success it takes `path`'s place in one step, on
    error it is removed and `path` is untouched. What may be replaced is decided by `check_destination`
    (same arguments), before the work and again before the swap."""
    path = Path(path)
    protect = list(protect)
    check = dict(overwrite=overwrite, replaceable=replaceable, what=what, protect=protect)
    check_destination(path, **check)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    tmp = _temp_path(path, TMP_TAG)
    tmp.mkdir()
    try:
        _write_marker(tmp)
        yield tmp
        (tmp / MARKER).unlink()
        apply_umask(tmp)
        check_destination(path, **check)
        if path.is_dir():
            _replace_folder(tmp, path)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def create_file(path: str | os.PathLike, data: bytes) -> bool:
    """Create `path` holding `data`, whole, unless it exists: a claim that two processes cannot both win.

    The data are written under a temporary name and hard-linked into place (the link fails if `path` exists), so
    a reader never sees a part. Returns False, writing nothing, when `path` already exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    tmp = _temp_path(path, TMP_TAG)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        apply_umask(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            # No hard links on this file system: an exclusive create still decides who claims it.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        return True
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success it replaces `path` (one rename) with the umask's
    mode, on error it is removed. A folder at `path` is refused."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    tmp = _temp_path(path, TMP_TAG)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield tmp
        apply_umask(tmp)  # after the writer: safetensors, for one, replaces the file with a private one
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
