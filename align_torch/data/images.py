"""Image files for batch jobs: loading with EXIF orientation, listing folders and globs, and a Dataset that
reports unreadable files instead of raising, so one bad file never stops a long run.
"""

from __future__ import annotations

import errno
import glob
import io
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from torch.utils.data import Dataset

from ..preprocess.image_processing import to_rgb_chw

# Suffixes picked up when listing a folder (case-insensitive). Files named explicitly or matched by a glob
# are taken whatever their suffix.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
_GLOB_CHARS = frozenset("*?[")


class ImageLoadError(ValueError):
    """A file that cannot be read as an image (missing, empty, truncated, not an image); names the path."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


def load_image(path: str | os.PathLike, draft: tuple[int, int] | None = None) -> PIL.Image.Image:
    """Read an image file fully, apply its EXIF orientation, and return it as RGB (transparency on white).

    Raises ImageLoadError for a missing, empty, truncated or non-image file. The whole file is decoded here
    (PIL otherwise decodes lazily), so a truncated JPEG fails now rather than as grey pixels later. `draft`
    (width, height): a JPEG is decoded at the smallest of 1/1, 1/2, 1/4, 1/8 of its size that still covers it
    (PIL's draft mode: faster, other pixels; see docs/fast-inference.md); other formats are decoded in full.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(path, _missing_reason(path))
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    return _decode(path, path, draft)


def decode_image(data: bytes, where: str, draft: tuple[int, int] | None = None) -> PIL.Image.Image:
    """Encoded image bytes (from a tar member or a Parquet cell) -> RGB as load_image gives it; ImageLoadError
    naming `where` when they do not decode."""
    if not data:
        raise ImageLoadError(where, "empty image (0 bytes)")
    return _decode(io.BytesIO(data), where, draft)


def _decode(source: Path | io.BytesIO, where: str | os.PathLike, draft: tuple[int, int] | None) -> PIL.Image.Image:
    try:
        with PIL.Image.open(source) as image:
            if draft is not None and image.format == "JPEG":
                # Square (the larger side twice): the EXIF rotation applied after may swap width and height.
                image.draft(image.mode, (max(draft),) * 2)
            image.load()
            rgb = to_rgb_image(PIL.ImageOps.exif_transpose(image))
    except PIL.UnidentifiedImageError:
        raise ImageLoadError(where, "not an image file PIL can read") from None
    except Exception as e:
        # Truncated data raises OSError ("image file is truncated"), but PIL's decoders raise many other
        # types on malformed files (SyntaxError, struct.error, IndexError, DecompressionBombError...).
        raise ImageLoadError(where, f"unreadable image ({type(e).__name__}: {e})") from None
    return rgb


def to_rgb_image(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB by the processor's conversion (transparency on white), so a loaded file and the PIL image give equal
    pixels."""
    rgb = to_rgb_chw(image)  # (3, H, W) uint8
    return PIL.Image.fromarray(np.ascontiguousarray(np.moveaxis(rgb, 0, -1)))  # (H, W, 3)


def _missing_reason(path: Path) -> str:
    """Why a path that is not a file cannot be read: a broken symbolic link says so, with its target."""
    if not path.is_symlink():
        return "no such file" if not path.exists() else "not a file"
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"dangling symbolic link (to {os.readlink(path)!r})"
    return "not a file"


def _is_broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _list_folder(folder: Path) -> list[Path]:
    """Image files under `folder`, sorted; hidden files and folders are skipped, links to folders not followed,
    and a subfolder that cannot be read is reported in a warning (rglob would pass over it silently)."""

    def unreadable(e: OSError) -> None:
        warnings.warn(f"skipped folder {e.filename}: {(e.strerror or str(e)).lower()}", stacklevel=2)

    found = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        # Dotfiles include macOS "._name.jpg" metadata files, which carry an image suffix but hold no image.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath) / name
            if (
                not name.startswith(".")
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and (p.is_file() or _is_broken_link(p))
            ):
                found.append(p)
    return sorted(found)


def has_images(folder: Path) -> bool:
    """Whether `folder` holds an image file that list_images would find."""
    return bool(_list_folder(folder))


def list_images(specs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand image files, folders and glob patterns into a list of files, in order, without duplicates.

    A folder is searched recursively for files with an image suffix (IMAGE_EXTENSIONS), skipping hidden
    files and folders; a glob (`photos/**/*.jpg`, recursive with `**`) and a file named explicitly are taken
    as they are. A broken symbolic link (dangling, or a loop) is listed like a file, so that the job reports it
    as skipped. A path that does not exist, or a glob or folder that matches nothing, raises.
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    files: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found = _list_folder(path)
            if not found:
                raise FileNotFoundError(f"no image files (suffixes {', '.join(sorted(IMAGE_EXTENSIONS))}) in {path}")
        elif path.exists() or path.is_symlink():
            found = [path]
        elif _GLOB_CHARS & set(str(spec)):
            found = _glob_files(os.path.expanduser(str(spec)))
            if not found:
                raise FileNotFoundError(f"no files match {str(spec)!r}")
        else:
            raise FileNotFoundError(f"no such file or folder: {str(spec)!r}")
        files.extend(found)
    seen: set[str] = set()
    unique = []
    for f in files:
        key = os.path.realpath(f)  # unlike Path.resolve, never raises on a symbolic link loop
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _glob_files(pattern: str) -> list[Path]:
    """The files (and broken links) a glob matches, sorted. `**` follows links to folders, so a link loop can
    match one file under many names; keep the shortest."""
    by_target: dict[str, Path] = {}
    for match in glob.glob(pattern, recursive=True):
        p = Path(match)
        if p.is_file() or _is_broken_link(p):
            key = os.path.realpath(p)
            if key not in by_target or len(p.parts) < len(by_target[key].parts):
                by_target[key] = p
    return sorted(by_target.values())


@dataclass
class ImageItem:
    """One Dataset item: the preprocessed pixels, or the reason the file could not be used."""

    index: int
    pixels: torch.Tensor | None  # (3, H, W)
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds spent on this item (read_item)


@dataclass
class ImageBatch:
    """A collated batch: the good images stacked, the bad ones as (index, reason)."""

    indices: list[int]
    pixel_values: torch.Tensor | None  # (B, 3, H, W); None when every image of the batch was bad
    failures: list[tuple[int, str]]
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds its items took, and collating

    def pin_memory(self) -> ImageBatch:
        """Called by DataLoader(pin_memory=True), which pins no dataclass by itself: page-locked pixels let the
        copy to the GPU overlap the model."""
        if self.pixel_values is not None:
            self.pixel_values = self.pixel_values.pin_memory()
        return self


class ImageFileDataset(Dataset):
    """Image files -> ImageItem(index, pixels) for a DataLoader; unreadable files become ImageItem(index,
    None, reason) instead of raising, so a worker never dies on a bad file. Collate with `collate_images`.

    `transform` maps a PIL RGB image to a (3, H, W) array or tensor, e.g. `processor.image_processor.preprocess_one`;
    `load` reads one item (load_image for files; `data.load_pair_image` also reads tar, Parquet and rows' images,
    which are kept as they are rather than made paths).
    """

    def __init__(
        self,
        paths: Sequence,
        transform: Callable[[PIL.Image.Image], np.ndarray | torch.Tensor],
        load: Callable[..., PIL.Image.Image] = load_image,
    ) -> None:
        self.paths = [Path(p) if isinstance(p, (str, os.PathLike)) else p for p in paths]
        self.transform = transform
        self.load = load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> ImageItem:
        return read_item(index, self.paths[index], self.load, self.transform)


Transform = Callable[[PIL.Image.Image], "np.ndarray | torch.Tensor"]


def read_item(
    index: int, ref: object, load: Callable, transform: Transform | Sequence[tuple[str, Transform]]
) -> ImageItem:
    """`load(ref)` then `transform` (one callable, or named steps run in turn) -> ImageItem, timing each stage
    ("decode", then "preprocess" or each step's name); a file that cannot be used becomes ImageItem(index, None,
    reason), so a DataLoader worker never dies on a bad file."""
    steps = [("preprocess", transform)] if callable(transform) else list(transform)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    try:
        x = load(ref)
    except ImageLoadError as e:
        return ImageItem(index, None, e.reason)
    seconds["decode"] = time.perf_counter() - start
    try:
        for name, step in steps:
            start = time.perf_counter()
            x = step(x)
            seconds[name] = time.perf_counter() - start
        # np.array copies: a read-only array would give a tensor PyTorch warns about.
        pixels = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))
    except Exception as e:  # a failure on one file is reported for that file, never fatal to the run
        return ImageItem(index, None, f"preprocessing failed ({type(e).__name__}: {e})")
    return ImageItem(index, pixels, seconds=seconds)


def collate_images(items: list[ImageItem]) -> ImageBatch:
    """DataLoader collate_fn for ImageFileDataset: stack the good images, keep the bad ones' reasons."""
    start = time.perf_counter()
    good = [item for item in items if item.pixels is not None]
    seconds: dict[str, float] = {}
    for item in items:
        for stage, t in item.seconds.items():
            seconds[stage] = seconds.get(stage, 0.0) + t
    batch = ImageBatch(
        indices=[item.index for item in good],
        pixel_values=torch.stack([item.pixels for item in good]) if good else None,
        failures=[(item.index, item.error or "unreadable") for item in items if item.pixels is None],
        seconds=seconds,
    )
    seconds["collate"] = time.perf_counter() - start
    return batch
