"""Image-caption data for fine-tuning: manifests and WebDataset shards, the train transform, a resumable
per-epoch batch order, and a collate function that tokenises and drops unreadable images.

Every random choice about a sample (its place in the epoch, its crop, its flip) is a pure function of
(seed, epoch, index), never of a worker's or the main process's RNG, so the batches are the same with any
number of DataLoader workers and after a resume.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import math
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from torch.utils.data import Dataset, Sampler

from ..image_processing import AlignImageProcessor
from ..images import ImageLoadError, load_image
from ..tokenizer import AlignTokenizer

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl")
SHARD_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class TarMember:
    """An image stored inside a tar shard, read by seeking to its data."""

    shard: str
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class Pair:
    image: Path | TarMember
    caption: str


@dataclass
class PairList:
    """What reading a manifest or shards gives: the usable pairs and how many rows were skipped."""

    pairs: list[Pair]
    skipped_empty_captions: int = 0


# --- reading ------------------------------------------------------------------------------------------
def read_pairs(spec: str | os.PathLike) -> PairList:
    """A manifest file (.csv/.tsv/.jsonl) or WebDataset shards (a .tar, a folder of .tar, a glob, or a
    brace range such as `shards/{00000..00009}.tar`) -> image-caption pairs."""
    text = os.fspath(spec)
    if text.endswith(MANIFEST_SUFFIXES):
        return read_manifest(text)
    shards = expand_shards(text)
    if not shards:
        raise FileNotFoundError(
            f"{text!r} is neither a manifest ({', '.join(MANIFEST_SUFFIXES)}) nor .tar shards that exist"
        )
    return read_shards(shards)


def read_manifest(path: str | os.PathLike) -> PairList:
    """Rows with `image` (a path relative to the manifest's folder, or absolute) and `caption`.

    Rows with an empty caption are counted in `skipped_empty_captions` and left out."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {str(path)!r} does not exist")
    rows = _read_rows(path)
    pairs, empty = [], 0
    for i, row in enumerate(rows):
        missing = [k for k in ("image", "caption") if k not in row]
        if missing:
            raise ValueError(f"{path}: row {i + 1} has no {' or '.join(missing)} column (found {sorted(row)})")
        caption = str(row["caption"] or "").strip()
        if not caption:
            empty += 1
            continue
        if not row["image"]:
            raise ValueError(f"{path}: row {i + 1} has an empty image path")
        image = Path(str(row["image"])).expanduser()
        pairs.append(Pair(image if image.is_absolute() else path.parent / image, caption))
    if not pairs:
        raise ValueError(f"{path}: no rows with both an image and a non-empty caption")
    return PairList(pairs, empty)


def _read_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix == ".jsonl":
            rows = []
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}: line {i + 1} is not JSON ({e})") from None
                    if not isinstance(row, dict):
                        raise ValueError(f"{path}: line {i + 1} is not a JSON object")
                    rows.append(row)
            return rows
        return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))


def expand_shards(spec: str) -> list[Path]:
    """`a.tar`, a folder (its *.tar), a glob, or brace ranges `{000..123}` (zero padding kept), sorted."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return sorted(path.glob("*.tar"))
    if path.is_file():
        return [path]
    names = [spec]
    while any(re.search(r"\{(\d+)\.\.(\d+)\}", n) for n in names):
        expanded = []
        for n in names:
            m = re.search(r"\{(\d+)\.\.(\d+)\}", n)
            if m is None:
                expanded.append(n)
                continue
            width = len(m.group(1))
            for k in range(int(m.group(1)), int(m.group(2)) + 1):
                expanded.append(n[: m.start()] + str(k).zfill(width) + n[m.end() :])
        names = expanded
    files = sorted({Path(p) for n in names for p in glob.glob(os.path.expanduser(n))})
    return [f for f in files if f.is_file()]


def read_shards(shards: Sequence[Path]) -> PairList:
    """Index WebDataset tar shards: files sharing a key (the name up to the first dot) form one sample; a
    sample needs an image (.jpg/.jpeg/.png/.webp) and a .txt caption. Only headers and captions are read."""
    pairs, empty = [], 0
    for shard in shards:
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tarfile.open(shard) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    directory, _, base = member.name.rpartition("/")
                    stem, dot, ext = base.partition(".")
                    if dot:
                        samples.setdefault(f"{directory}/{stem}", {})[ext.lower()] = member
                for files in samples.values():
                    image = next((files[e] for e in SHARD_IMAGE_SUFFIXES if e in files), None)
                    if image is None or "txt" not in files:
                        continue
                    caption = tar.extractfile(files["txt"]).read().decode("utf-8", errors="replace").strip()
                    if not caption:
                        empty += 1
                        continue
                    ref = TarMember(str(shard), image.name, image.offset_data, image.size)
                    pairs.append(Pair(ref, caption))
        except tarfile.TarError as e:
            raise ValueError(f"{shard}: not a readable tar shard ({e})") from None
    if not pairs:
        raise ValueError(f"no image + .txt samples in {len(shards)} shard(s), e.g. {shards[0]}")
    return PairList(pairs, empty)


def load_pair_image(image: Path | TarMember) -> PIL.Image.Image:
    """The RGB image of a pair (EXIF orientation applied); ImageLoadError when it cannot be read."""
    if isinstance(image, Path):
        return load_image(image)
    where = f"{image.shard}:{image.name}"
    try:
        with open(image.shard, "rb") as f:
            f.seek(image.offset)
            data = f.read(image.size)
        with PIL.Image.open(io.BytesIO(data)) as im:
            im.load()
            return PIL.ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise ImageLoadError(where, f"unreadable image ({type(e).__name__}: {e})") from None


# --- transforms ---------------------------------------------------------------------------------------
def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one sample in one epoch."""
    return np.random.default_rng([seed, epoch, index])


@dataclass(frozen=True)
class TrainTransform:
    """Random resized crop (torchvision's algorithm) to the model's resolution, optional flip, then the
    processor's rescale/normalise, so train pixels have the same range as the eval processor's."""

    image_processor: AlignImageProcessor
    size: tuple[int, int]  # (height, width): the processor's crop size
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = False

    def __call__(self, image: PIL.Image.Image, rng: np.random.Generator) -> np.ndarray:
        left, top, w, h = self._crop_box(image.width, image.height, rng)
        box = (left, top, left + w, top + h)
        image = image.resize((self.size[1], self.size[0]), PIL.Image.Resampling.BILINEAR, box=box)
        if self.hflip and rng.random() < 0.5:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        finish = dataclasses.replace(self.image_processor, do_resize=False, do_center_crop=False)
        return finish.preprocess_one(image)  # (3, height, width)

    def _crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
        # Fallback: the largest centred crop within the aspect-ratio range.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h


# --- dataset, batch order, collate --------------------------------------------------------------------
@dataclass
class PairItem:
    index: int
    pixels: torch.Tensor | None  # (3, H, W); None when the image could not be read
    caption: str
    error: str | None = None


class PairDataset(Dataset):
    """Items are addressed by (epoch, index) so the train transform's randomness follows the sample.

    With `transform=None` images go through the eval processor (resize + centre crop)."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        image_processor: AlignImageProcessor,
        transform: TrainTransform | None = None,
        seed: int = 0,
    ) -> None:
        self.pairs = list(pairs)
        self.image_processor = image_processor
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> PairItem:
        epoch, index = key
        pair = self.pairs[index]
        try:
            image = load_pair_image(pair.image)
        except ImageLoadError as e:
            return PairItem(index, None, pair.caption, str(e))
        if self.transform is None:
            pixels = self.image_processor.preprocess_one(image)
        else:
            pixels = self.transform(image, sample_rng(self.seed, epoch, index))
        return PairItem(index, torch.from_numpy(np.ascontiguousarray(pixels)), pair.caption)


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """One epoch's batches for one rank: a permutation seeded by (seed, epoch), cut into global batches of
    batch_size * world samples (the last incomplete one dropped); rank r takes the r-th slice of each, so the
    ranks' batches concatenated in rank order are exactly one process's batch at batch_size * world.
    `start` skips batches already consumed (resume)."""

    def __init__(
        self, num_samples: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1, start: int = 0
    ) -> None:
        if num_samples < batch_size * world:
            raise ValueError(
                f"{num_samples} training pairs are fewer than one global batch ({batch_size} x {world} ranks)"
            )
        self.num_samples, self.batch_size, self.epoch, self.seed = num_samples, batch_size, epoch, seed
        self.rank, self.world, self.start = rank, world, start

    @staticmethod
    def per_epoch(num_samples: int, batch_size: int, world: int = 1) -> int:
        return num_samples // (batch_size * world)

    def __len__(self) -> int:
        return self.per_epoch(self.num_samples, self.batch_size, self.world) - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g).tolist()
        global_batch = self.batch_size * self.world
        for b in range(self.start, self.per_epoch(self.num_samples, self.batch_size, self.world)):
            first = b * global_batch + self.rank * self.batch_size
            yield [(self.epoch, i) for i in order[first : first + self.batch_size]]


@dataclass
class Batch:
    """A collated training batch; `failures` are (index, reason) of the images left out."""

    pixel_values: torch.Tensor  # (b, 3, H, W); b may be 0 when every image failed
    input_ids: torch.Tensor  # (b, max_length)
    attention_mask: torch.Tensor  # (b, max_length)
    token_type_ids: torch.Tensor  # (b, max_length)
    failures: list[tuple[int, str]]

    def to(self, device: torch.device) -> Batch:
        move = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self) if f.name != "failures"}
        return Batch(**move, failures=self.failures)

    def __len__(self) -> int:
        return self.pixel_values.shape[0]


@dataclass
class Collate:
    """DataLoader collate_fn: stack the readable images, tokenise their captions to max_length."""

    tokenizer: AlignTokenizer
    max_length: int = 64
    image_size: tuple[int, int] = (289, 289)  # (height, width), for the shape of an all-failed batch

    def __call__(self, items: list[PairItem]) -> Batch:
        good = [item for item in items if item.pixels is not None]
        failures = [(item.index, item.error or "unreadable") for item in items if item.pixels is None]
        if not good:
            empty = torch.zeros(0, self.max_length, dtype=torch.long)
            pixels = torch.zeros(0, 3, *self.image_size)
            return Batch(pixels, empty, empty.clone(), empty.clone(), failures)
        tokens = self.tokenizer([item.caption for item in good], padding="max_length", max_length=self.max_length)
        return Batch(
            pixel_values=torch.stack([item.pixels for item in good]),  # (b, 3, H, W)
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            token_type_ids=tokens["token_type_ids"],
            failures=failures,
        )
