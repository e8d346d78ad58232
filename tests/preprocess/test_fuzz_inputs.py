"""Seeded property tests of the processor and tokenizer: random images of every PIL mode, every array dtype and
sizes down to 1×1; random Unicode with control characters and 1 MB strings. Each call either gives outputs of
the documented shape, dtype and range, or raises one of the documented errors (ValueError / TypeError)."""

from __future__ import annotations

import random

import numpy as np
import PIL.Image
import pytest
import torch

from align_torch.preprocess.image_processing import AlignImageProcessor
from align_torch.preprocess.tokenizer import AlignTokenizer
from tests.helpers.proc_data import ALIGN_BASE_PREPROCESSOR, write_checkpoint

# Small crop for speed; no normalisation, so the documented range is align-base's [-1, 1].
CONFIG = {**ALIGN_BASE_PREPROCESSOR, "size": {"height": 20, "width": 24}, "crop_size": {"height": 16, "width": 16}}
PIL_MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"]
PIL_MODES += ["I", "I;16", "I;16L", "I;16B", "I;16N", "F"]
DTYPES = [np.uint8, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_, np.complex64]


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return tuple(int(v) for v in rng.choice([1, 2, 3, 7, 16, 33, 100], size=2))


def _random_pil(rng: np.random.Generator, mode: str, in_range: bool) -> PIL.Image.Image:
    """A random image in `mode`: converted from random RGB (values PIL itself produces), or raw random bytes."""
    width, height = _size(rng)
    if in_range:
        rgb = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        if mode in ("I;16L", "I;16B", "I;16N", "LAB", "HSV", "La", "RGBa", "PA"):
            # PIL has no direct RGB converter for these; fill them from raw bytes of the right length.
            raw = len(PIL.Image.new(mode, (width, height)).tobytes())
            return PIL.Image.frombytes(mode, (width, height), rng.bytes(raw))
        return rgb.convert(mode)
    raw = len(PIL.Image.new(mode, (width, height)).tobytes())
    return PIL.Image.frombytes(mode, (width, height), rng.bytes(raw))


def _random_array(rng: np.random.Generator) -> np.ndarray | torch.Tensor:
    height, width = _size(rng)
    channels = int(rng.choice([1, 2, 3, 4, 5]))
    shape = [(height, width), (height, width, channels), (channels, height, width)][int(rng.integers(3))]
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    kind = rng.random()
    if kind < 0.4:
        values = rng.random(shape)  # [0, 1]
    elif kind < 0.8:
        values = rng.integers(0, 256, shape)  # 8-bit
    else:
        values = rng.normal(0, 1000, shape)  # out of any range
    array = values.astype(dtype)
    if rng.random() < 0.4 and dtype not in (np.uint16,):
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.to(torch.bfloat16) if rng.random() < 0.2 and tensor.is_floating_point() else tensor
    return array


def _check_pixels(pixels: torch.Tensor, count: int) -> None:
    assert pixels.shape == (count, 3, 16, 16) and pixels.dtype == torch.float32
    assert torch.isfinite(pixels).all() and pixels.min() >= -1.0 and pixels.max() <= 1.0


@pytest.mark.filterwarnings("ignore:a float image")
def test_processor_fuzz_every_pil_mode_dtype_and_tiny_size():
    proc = AlignImageProcessor.from_dict(CONFIG)
    rng = np.random.default_rng(2024)
    refused = 0
    for _ in range(6):
        for mode in PIL_MODES:
            # Images PIL itself converts to `mode` are ordinary images: they must always work.
            _check_pixels(proc(_random_pil(rng, mode, in_range=True)).pixel_values, 1)
            try:
                _check_pixels(proc(_random_pil(rng, mode, in_range=False)).pixel_values, 1)
            except ValueError as e:
                assert mode in ("I", "F") and "images[0]: a mode" in str(e), e  # out-of-range 32-bit values
                refused += 1
    one = PIL.Image.fromarray(np.array([[[9, 99, 199]]], dtype=np.uint8))
    _check_pixels(proc([one, one.convert("L"), one.convert("I;16")]).pixel_values, 3)
    for _ in range(400):
        image = _random_array(rng)
        try:
            _check_pixels(proc(image).pixel_values, 1)
        except (ValueError, TypeError) as e:
            assert str(e).startswith("images[0]: "), e
            refused += 1
    assert 0 < refused < 400  # both outcomes happen, so the test exercises both


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> AlignTokenizer:
    return AlignTokenizer.from_pretrained(write_checkpoint(tmp_path_factory.mktemp("fuzz"), ALIGN_BASE_PREPROCESSOR))


def _random_text(rnd: random.Random) -> str:
    kind = rnd.random()
    length = rnd.choice([0, 1, 2, 5, 30, 200])
    if kind < 0.3:  # any code point, surrogates excluded (they are not Unicode text)
        return "".join(chr(rnd.choice([rnd.randint(0, 0xD7FF), rnd.randint(0xE000, 0x10FFFF)])) for _ in range(length))
    if kind < 0.5:  # control and format characters
        return "".join(
            chr(rnd.choice([*range(32), *range(0x7F, 0xA0), 0x200B, 0x200D, 0xFEFF, 0x2028])) for _ in range(length)
        )
    if kind < 0.7:  # special-token look-alikes between words
        return " ".join(
            rnd.choice(["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "cat", "日本", "é", "\t"]) for _ in range(length)
        )
    return "".join(chr(rnd.randint(32, 0x24F)) for _ in range(length))


def _check_tokens(out, count: int, length: int | None, vocab_size: int, cls_id: int) -> None:
    ids, mask, types = out["input_ids"], out["attention_mask"], out["token_type_ids"]
    assert ids.dtype == mask.dtype == types.dtype == torch.int64
    assert ids.shape == mask.shape == types.shape and ids.shape[0] == count
    if length is not None:
        assert ids.shape[1] == length
    assert ids.min() >= 0 and ids.max() < vocab_size
    assert set(mask.unique().tolist()) <= {0, 1} and set(types.unique().tolist()) <= {0, 1}
    assert (ids[:, 0] == cls_id).all()


def test_tokenizer_fuzz_unicode_controls_and_megabyte_strings(tokenizer):
    rnd = random.Random(7)
    vocab, cls_id = tokenizer.vocab_size, tokenizer.cls_token_id
    for _ in range(60):
        batch = [_random_text(rnd) for _ in range(rnd.randint(1, 5))]
        max_length = rnd.choice([2, 3, 16, 64])
        padded = tokenizer(batch, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        _check_tokens(padded, len(batch), max_length, vocab, cls_id)
        _check_tokens(tokenizer(batch, padding=True, return_tensors="pt"), len(batch), None, vocab, cls_id)
    megabyte = "".join(rnd.choices("ab c\t日é\x00", k=1 << 20))
    long = tokenizer([megabyte, "a cat"], padding="max_length", truncation=True, return_tensors="pt")
    _check_tokens(long, 2, 64, vocab, cls_id)
    for bad, error, words in [
        (["a\ud800b"], ValueError, r"text\[0\] is not valid Unicode"),
        ("a cat", ValueError, "max_length must be an int >= 2"),
        ([b"bytes"], TypeError, "list of strings"),
        ([], ValueError, "empty"),
    ]:
        with pytest.raises(error, match=words):
            tokenizer(bad, max_length=1 if isinstance(bad, str) else None)
