"""Image-caption data for fine-tuning: a resumable per-epoch batch order, and a collate
function that tokenises and drops unreadable images. Manifests and shards are read by align_torch.data, and the train transform
(shared with evaluation) lives in align_torch.data.transforms.

Every random choice about a sample (its place in the epoch, its crop, its flip) is a pure function of
(seed, epoch, index), never of a worker's or the main process's RNG, so the batches are the same with any
number of DataLoader workers and after a resume.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..data import MANIFEST_SUFFIXES as MANIFEST_SUFFIXES  # the trainer's names for the shared readers
from ..data import ImageLoadError, Pair, load_pair_image
from ..data import read_pairs as read_pairs
from ..data.transforms import TrainTransform as TrainTransform  # shared with evaluate/ (open_clip)
from ..data.transforms import sample_rng as sample_rng
from ..defaults import TEXT_LENGTH
from ..preprocess.image_processing import AlignImageProcessor
from ..preprocess.tokenizer import AlignTokenizer


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

    def rows(self, start: int, stop: int) -> Batch:
        """Pairs start..stop-1 (a view); `failures` stay with the whole batch."""
        cut = {f.name: getattr(self, f.name)[start:stop] for f in dataclasses.fields(self) if f.name != "failures"}
        return Batch(**cut, failures=[])


@dataclass
class Collate:
    """DataLoader collate_fn: stack the readable images, tokenise their captions to max_length."""

    tokenizer: AlignTokenizer
    max_length: int = TEXT_LENGTH
    image_size: tuple[int, int] = (289, 289)  # (height, width), for the shape of an all-failed batch

    def __call__(self, items: list[PairItem]) -> Batch:
        good = [item for item in items if item.pixels is not None]
        failures = [(item.index, item.error or "unreadable") for item in items if item.pixels is None]
        if not good:
            empty = torch.zeros(0, self.max_length, dtype=torch.long)
            pixels = torch.zeros(0, 3, *self.image_size)
            return Batch(pixels, empty, empty.clone(), empty.clone(), failures)
        captions = [item.caption for item in good]
        tokens = self.tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return Batch(
            pixel_values=torch.stack([item.pixels for item in good]),  # (b, 3, H, W)
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            token_type_ids=tokens["token_type_ids"],
            failures=failures,
        )
