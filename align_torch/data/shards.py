"""WebDataset tar shards (img2dataset's output): files sharing a key (the name up to the first dot) form one
sample: an image (.jpg/.jpeg/.png/.webp), an optional .txt caption and an optional .json with `key`, `url`.
Shards are indexed by reading headers only; an image is read later by seeking to its data."""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import PIL.Image

from .images import ImageLoadError, decode_image
from .samples import Pair, PairList, TarMember

SHARD_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
_BRACE_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shards(spec: str) -> list[Path]:
    """`a.tar`, a folder (its *.tar), a glob, or brace ranges `{000..123}` (zero padding kept), sorted."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return sorted(path.glob("*.tar"))
    if path.is_file():
        return [path]
    names = [spec]
    while any(_BRACE_RANGE.search(n) for n in names):
        expanded = []
        for n in names:
            m = _BRACE_RANGE.search(n)
            if m is None:
                expanded.append(n)
                continue
            width = len(m.group(1))
            for k in range(int(m.group(1)), int(m.group(2)) + 1):
                expanded.append(n[: m.start()] + str(k).zfill(width) + n[m.end() :])
        names = expanded
    files = sorted({Path(p) for n in names for p in glob.glob(os.path.expanduser(n))})
    return [f for f in files if f.is_file()]


class ShardError(ValueError):
    """A shard that cannot be read as a tar at all; names the shard and says why."""

    def __init__(self, shard: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{os.fspath(shard)}: {reason}")
        self.shard, self.reason = os.fspath(shard), reason


def read_shard(shard: str | os.PathLike, require_caption: bool = True, metadata: bool = False) -> PairList:
    """One shard's samples in the order they are stored. With `require_caption` a sample needs a non-empty
    .txt; with `metadata` each sample's .json is read for its `key` and `url` (else the key is the tar name).

    A truncated shard (a download or copy cut short) is read as webdataset's `warn_and_continue` reads it: the
    samples stored whole before the cut are kept, the sample the cut falls in is left out, and the shard is listed
    in `damaged` with where it ends, for the caller to report. A file that is not a tar at all raises ShardError."""
    pairs, empty = [], 0
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard) as tar:
            members, problem, cut = _members(tar, os.path.getsize(shard))
            for member in members:
                if member.isfile() and _sample_key(member) is not None:
                    key, ext = _sample_key(member)
                    samples.setdefault(key, {})[ext] = member
            if cut is not None:
                samples.pop(_sample_key(cut)[0], None)  # the sample being stored when the file ended may miss files
            for key, files in samples.items():
                image = next((files[e] for e in SHARD_IMAGE_SUFFIXES if e in files), None)
                if image is None or (require_caption and "txt" not in files):
                    continue
                caption = None
                if "txt" in files:
                    caption = tar.extractfile(files["txt"]).read().decode("utf-8", errors="replace").strip() or None
                if caption is None and require_caption:
                    empty += 1
                    continue
                url = None
                if metadata and "json" in files:
                    info = _json_object(tar.extractfile(files["json"]).read())
                    key = str(info.get("key") or key)
                    url = None if info.get("url") is None else str(info["url"])
                ref = TarMember(os.fspath(shard), image.name, image.offset_data, image.size)
                pairs.append(Pair(ref, caption, key=key if metadata else None, url=url))
    except (tarfile.TarError, OSError) as e:
        raise ShardError(shard, f"not a readable tar shard ({e})") from None
    damaged = (
        [] if problem is None else [(os.fspath(shard), f"{problem}; kept the {len(pairs)} samples stored before it")]
    )
    return PairList(pairs, empty, damaged)


def _sample_key(member: tarfile.TarInfo) -> tuple[str, str] | None:
    """(sample key, lower-case extension) of a member: the name up to the first dot of its base name."""
    directory, _, base = member.name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem, ext.lower()) if dot else None


def _members(tar: tarfile.TarFile, size: int) -> tuple[list[tarfile.TarInfo], str | None, tarfile.TarInfo | None]:
    """The members stored whole in a tar of `size` bytes; why the archive ends early (None: it is complete, its
    end-of-archive block is there); and the member whose sample the cut may have split (the member cut, else the
    last one stored). tarfile alone stops quietly at some cuts and raises at others."""
    members: list[tarfile.TarInfo] = []
    try:
        for member in tar:
            if member.offset_data + member.size > size:
                where = f"inside member {member.name!r}"
                return members, f"truncated tar shard: the file ends at byte {size}, {where}", member
            members.append(member)
    except tarfile.ReadError:
        where = f"after member {members[-1].name!r}" if members else "in its first header"
        return members, f"truncated tar shard: the file ends at byte {size}, {where}", members[-1] if members else None
    # A complete tar ends with a zero block where the next header would be; a cut between members leaves none.
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        last = f" after member {members[-1].name!r}" if members else ""
        why = f"truncated tar shard: the file ends at byte {size}{last} without tar's end-of-archive block"
        return members, why, members[-1] if members else None
    return members, None, None


def _json_object(data: bytes) -> dict:
    # A damaged .json costs the sample its url, not the run.
    try:
        info = json.loads(data.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


def read_shards(shards: Sequence[Path], require_caption: bool = True, metadata: bool = False) -> PairList:
    """All samples of the shards, shard by shard (see read_shard); raises when there are none."""
    pairs, empty, damaged = [], 0, []
    for shard in shards:
        part = read_shard(shard, require_caption, metadata)
        pairs.extend(part.pairs)
        empty += part.skipped_empty_captions
        damaged.extend(part.damaged)
        for name, reason in part.damaged:
            warnings.warn(f"{name}: {reason}", stacklevel=2)
    if not pairs:
        what = "image + .txt" if require_caption else "image"
        raise ValueError(f"no {what} samples in {len(shards)} shard(s), e.g. {shards[0]}")
    return PairList(pairs, empty, damaged)


def load_tar_image(image: TarMember, draft: tuple[int, int] | None = None) -> PIL.Image.Image:
    """The RGB image stored in a shard (EXIF orientation applied); ImageLoadError when it cannot be read."""
    where = f"{image.shard}:{image.name}"
    try:
        with open(image.shard, "rb") as f:
            f.seek(image.offset)
            data = f.read(image.size)
    except OSError as e:
        raise ImageLoadError(where, f"unreadable image ({type(e).__name__}: {e})") from None
    return decode_image(data, where, draft)
