"""Image transforms shared by fine-tuning and evaluation: the train transform (random resized crop, optional
flip, then the eval processor's rescale and normalise) and the per-sample random stream it draws from.

The crop and flip defaults live here, once: TrainConfig's fields and open_clip's `preprocess_train` both read
them, so a fine-tuning run and `create_model_and_transforms` augment alike.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import PIL.Image

from ..preprocess.image_processing import AlignImageProcessor

CROP_SCALE = (0.9, 1.0)  # area fraction kept by the random resized crop (open_clip's fine-tuning default)
CROP_RATIO = (3 / 4, 4 / 3)  # aspect-ratio range of the crop (torchvision's)
HFLIP = False  # off: captions may say left or right


def crop_size(image_processor: AlignImageProcessor) -> tuple[int, int]:
    """(height, width) of the model's input: the processor's crop size, or its resize when it does not crop."""
    return tuple(image_processor.crop_size if image_processor.do_center_crop else image_processor.size)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one sample in one epoch."""
    return np.random.default_rng([seed, epoch, index])


@dataclass(frozen=True)
class TrainTransform:
    """Random resized crop (torchvision's algorithm) to the model's resolution, optional flip, then the
    processor's rescale/normalise, so train pixels have the same range as the eval processor's."""

    image_processor: AlignImageProcessor
    size: tuple[int, int]  # (height, width): the processor's crop size
    scale: tuple[float, float] = CROP_SCALE
    ratio: tuple[float, float] = CROP_RATIO
    hflip: bool = HFLIP

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
