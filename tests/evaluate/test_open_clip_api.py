"""open_clip-style entry points: create_model_and_transforms + get_tokenizer + encode_* give the embeddings of
the processor + get_*_features path, including texts of mixed lengths padded into one tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import align_torch
from align_torch import AlignProcessor

TEXTS = ["a cat", "a photo of a small dog sitting on a red sofa next to a window", "rocket", ""]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 60), (70, 33))]


@pytest.fixture(scope="module")
def loaded(model_dir: Path):
    model, train, val = align_torch.create_model_and_transforms(model_dir, device="cpu")
    return model, train, val, align_torch.get_tokenizer(model_dir), AlignProcessor.from_pretrained(model_dir)


def test_embeddings_match_the_processor_path(loaded):
    model, _, preprocess_val, tokenizer, processor = loaded
    images = _images()
    pixels = torch.stack([preprocess_val(im) for im in images])  # (2, 3, H, W)
    reference_pixels = processor(images=images)["pixel_values"]
    assert torch.equal(pixels, reference_pixels)  # pixel-identical
    ids = tokenizer(TEXTS).to("cpu")
    assert ids.dtype == torch.int64 and ids.shape == (len(TEXTS), 64)
    with torch.no_grad():
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(ids, normalize=True)  # no mask: derived from the pad id
        ref_image = F.normalize(model.get_image_features(reference_pixels), dim=-1)
        ref_text = F.normalize(model.get_text_features(**processor(text=TEXTS)), dim=-1)
        # Each text alone, unpadded: the padding of the mixed-length batch must change nothing.
        alone = torch.cat([model.encode_text(**processor(text=[t], padding=False), normalize=True) for t in TEXTS])
    torch.testing.assert_close(image, ref_image, rtol=0, atol=1e-6)
    torch.testing.assert_close(text, ref_text, rtol=0, atol=1e-6)
    torch.testing.assert_close(text, alone, rtol=0, atol=1e-6)
    assert tokenizer("a cat").shape == (1, 64) and tokenizer(["a cat"], context_length=8).shape == (1, 8)


def test_train_transform_is_the_fine_tuning_crop(loaded):
    _, preprocess_train, preprocess_val, _, _ = loaded
    image = _images()[0]
    torch.manual_seed(0)
    a = preprocess_train(image)
    torch.manual_seed(0)
    b = preprocess_train(image)
    c = preprocess_train(image)
    assert a.shape == preprocess_val(image).shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(b, c)  # torch's seed decides the random crop
    assert a.min() >= -1 and a.max() <= 1  # the processor's rescale, as the eval path


def test_precision_and_bad_arguments(model_dir: Path):
    model, _, _ = align_torch.create_model_and_transforms(f"{model_dir}", precision="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    with pytest.raises(ValueError, match="precision must be one of"):
        align_torch.create_model_and_transforms(model_dir, precision="fp8")
