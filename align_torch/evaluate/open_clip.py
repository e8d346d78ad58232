"""open_clip-style entry points, so code written for open_clip (and harnesses such as CLIP_benchmark) runs
ALIGN unchanged:

    model, preprocess_train, preprocess_val = align_torch.create_model_and_transforms("kakaobrain/align-base")
    tokenizer = align_torch.get_tokenizer("kakaobrain/align-base")
    image = model.encode_image(preprocess_val(pil_image)[None], normalize=True)  # (1, 640)
    text = model.encode_text(tokenizer(["a photo of a cat"]), normalize=True)  # (1, 640); mask from the pad id
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch

from ..checkpoint.hub import resolve_model
from ..data.transforms import TrainTransform, crop_size
from ..model.align import AlignModel
from ..preprocess.image_processing import AlignImageProcessor
from ..preprocess.processor import AlignProcessor
from ..preprocess.tokenizer import AlignTokenizer

# open_clip's precision names -> (weights dtype). "amp*" keep fp32 weights for torch.autocast to run in.
PRECISIONS = {
    "fp32": torch.float32,
    "amp": torch.float32,
    "amp_bf16": torch.float32,
    "fp16": torch.float16,
    "pure_fp16": torch.float16,
    "bf16": torch.bfloat16,
    "pure_bf16": torch.bfloat16,
}


class ImageTransform:
    """PIL image -> (3, H, W) float32 tensor through the processor's eval path: pixel-identical to
    `AlignProcessor(images=...)`."""

    def __init__(self, image_processor: AlignImageProcessor) -> None:
        self.image_processor = image_processor

    def __call__(self, image: PIL.Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.array(self.image_processor.preprocess_one(image)))  # (3, H, W)

    def __repr__(self) -> str:
        return f"ImageTransform({self.image_processor!r})"


class TrainImageTransform:
    """PIL image -> (3, H, W) float32 tensor through the fine-tuning train transform (random resized crop,
    optional flip, the processor's rescale), with its randomness drawn from torch's generator so that
    torch.manual_seed and DataLoader worker seeding decide it, as for torchvision transforms."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image: PIL.Image.Image) -> torch.Tensor:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        return torch.from_numpy(np.array(self.transform(image.convert("RGB"), rng)))  # (3, H, W)

    def __repr__(self) -> str:
        return f"TrainImageTransform({self.transform!r})"


class TextTokenizer:
    """list of strings (or one string) -> (B, context_length) int64 ids, padded with the pad id and truncated
    to `context_length` (64 for ALIGN), as open_clip's tokenizers do. `model.encode_text(ids)` derives the
    attention mask from the pad id."""

    def __init__(self, tokenizer: AlignTokenizer, context_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length or tokenizer.model_max_length

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        return self.tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")[
            "input_ids"
        ]


def _train_transform(image_processor: AlignImageProcessor) -> TrainImageTransform:
    # The fine-tuning transform with the defaults a run uses (data/transforms.py is the one home of both).
    return TrainImageTransform(TrainTransform(image_processor, size=crop_size(image_processor)))


def create_model_and_transforms(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
    revision: str | None = None,
) -> tuple[AlignModel, TrainImageTransform, ImageTransform]:
    """(model in eval mode, preprocess_train, preprocess_val) from a folder or Hub repo id, as open_clip's
    function of the same name. `precision` is open_clip's: fp32, fp16, bf16, amp, amp_bf16, pure_fp16,
    pure_bf16 (amp* keep fp32 weights for torch.autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    name = str(name_or_path).removeprefix("hf-hub:")
    folder = resolve_model(name, revision=revision, cache_dir=cache_dir).folder  # once, for model and processor
    model = AlignModel.from_pretrained(folder, device=device, dtype=PRECISIONS[precision])
    image_processor = AlignProcessor.from_pretrained(folder).image_processor
    return model, _train_transform(image_processor), ImageTransform(image_processor)


def get_tokenizer(
    name_or_path: str | os.PathLike, context_length: int | None = None, *, cache_dir: str | None = None
) -> TextTokenizer:
    """The tokenizer of a folder or Hub repo id as open_clip's get_tokenizer: texts -> (B, T) ids."""
    name = str(name_or_path).removeprefix("hf-hub:")
    return TextTokenizer(AlignProcessor.from_pretrained(name, cache_dir=cache_dir).tokenizer, context_length)
