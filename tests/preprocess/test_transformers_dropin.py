"""Code written for transformers' ALIGN preprocessing runs unchanged on ours: the same calls on
transformers' AlignProcessor / BertTokenizer and ours, from the same checkpoint folder, return the same values of
the same types (lists, torch tensors or numpy arrays; ids equal, pixels within 1e-6).

The vocabulary is the BERT-layout WordPiece vocab the tests build (tests/helpers/proc_data.py): there is no
network to fetch bert-base-uncased's, and this one covers every script the texts use."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import skimage.data as skimage_data
import torch
import transformers

from align_torch.preprocess.processor import AlignProcessor
from tests.helpers.proc_data import ALIGN_BASE_PREPROCESSOR, texts, write_checkpoint

TEXTS = texts(300, seed=11)
SHORT = ["a photo of a cat", "two dogs", "a red car on the street next to a small house"]
PHOTO = PIL.Image.fromarray(skimage_data.chelsea()).resize((120, 90))  # 3 channels, uint8, not square


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("dropin"), ALIGN_BASE_PREPROCESSOR)


@pytest.fixture(scope="module")
def processors(folder):
    return AlignProcessor.from_pretrained(folder), transformers.AlignProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def tokenizers(processors):
    ours, ref = processors
    return ours.tokenizer, ref.tokenizer


def assert_same_value(got, want, what: str, atol: float = 0.0) -> None:
    """Same type (list, tensor or array, recursively for lists), same dtype and shape, values within atol."""
    if isinstance(want, (list, tuple)):
        assert isinstance(got, list), f"{what}: {type(got).__name__} instead of a list"
        assert len(got) == len(want), f"{what}: {len(got)} entries instead of {len(want)}"
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same_value(a, b, f"{what}[{i}]", atol)
        return
    assert type(got) is type(want), f"{what}: {type(got).__name__} instead of {type(want).__name__}"
    if isinstance(want, (torch.Tensor, np.ndarray)):
        assert got.dtype == want.dtype and got.shape == want.shape, f"{what}: {got.dtype} {got.shape}"
        diff = float(np.abs(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64)).max())
        assert diff <= atol, f"{what}: differs by {diff}"
    else:
        assert got == want, f"{what}: {got!r} != {want!r}"


def assert_same_batch(got, want, atol: float = 0.0) -> None:
    assert list(got.keys()) == list(want.keys())
    for key in want.keys():
        assert_same_value(got[key], want[key], key, atol)


TOKENIZER_CALLS = [
    ("hello world", {}),
    (SHORT, {}),
    (SHORT, {"padding": True}),
    (SHORT, {"padding": "longest"}),
    (SHORT, {"padding": "max_length"}),
    (SHORT, {"padding": "max_length", "max_length": 12, "truncation": True}),
    (SHORT, {"padding": False}),
    (SHORT, {"truncation": True, "max_length": 5}),
    (SHORT, {"max_length": 5}),  # transformers truncates when max_length comes without padding
    (SHORT, {"padding": "max_length", "max_length": 5}),  # ... and not when it pads
    (TEXTS, {"truncation": True}),
    (TEXTS, {"padding": True, "truncation": True, "return_tensors": "pt"}),
    (TEXTS, {"padding": "max_length", "truncation": True, "return_tensors": "np"}),
    ("a photo of a cat", {"return_tensors": "pt"}),
    ("a photo of a cat", {"return_tensors": "np"}),
    (SHORT, {"padding": True, "return_attention_mask": False}),
    (SHORT, {"padding": True, "return_token_type_ids": False, "return_tensors": "pt"}),
    (SHORT, {"add_special_tokens": False}),
]


@pytest.mark.parametrize(("text", "kwargs"), TOKENIZER_CALLS, ids=[str(k) or "plain" for _, k in TOKENIZER_CALLS])
def test_tokenizer_call_contract(tokenizers, text, kwargs):
    ours, ref = tokenizers
    assert_same_batch(ours(text, **kwargs), ref(text, **kwargs))


def test_tokenizer_pairs_and_ragged_tensors(tokenizers):
    ours, ref = tokenizers
    assert_same_batch(ours("a cat", "a dog"), ref("a cat", "a dog"))
    assert_same_batch(ours(SHORT, SHORT[::-1], padding=True), ref(SHORT, SHORT[::-1], padding=True))
    for tokenizer in (ours, ref):
        with pytest.raises(ValueError):
            tokenizer(SHORT, return_tensors="pt")  # different lengths, no padding: no tensor


@pytest.mark.parametrize("skip", [False, True])
def test_decoding_side_round_trips(tokenizers, skip):
    ours, ref = tokenizers
    ids = ref(TEXTS, padding=True, truncation=True)["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=skip) == ref.batch_decode(ids, skip_special_tokens=skip)
    for rows in (torch.tensor(ids[:20]), np.array(ids[:20])):
        assert ours.batch_decode(rows, skip_special_tokens=skip) == ref.batch_decode(rows, skip_special_tokens=skip)
    for row in ids[:50]:
        assert ours.decode(row, skip_special_tokens=skip) == ref.decode(row, skip_special_tokens=skip)
        got = ours.convert_ids_to_tokens(row, skip_special_tokens=skip)
        assert got == ref.convert_ids_to_tokens(row, skip_special_tokens=skip)
        assert ours.convert_ids_to_tokens(torch.tensor(row), skip_special_tokens=skip) == got
    assert ours.decode(torch.tensor(ids[0])) == ref.decode(torch.tensor(ids[0]))
    assert ours.decode(ids[0][1]) == ref.decode(ids[0][1])  # one id
    assert ours.convert_ids_to_tokens(ids[0][1]) == ref.convert_ids_to_tokens(ids[0][1])


def test_tokens_and_ids_round_trip(tokenizers):
    ours, ref = tokenizers
    for text in TEXTS[:100]:
        tokens = ours.tokenize(text)
        assert tokens == ref.tokenize(text)
        assert ours.convert_tokens_to_ids(tokens) == ref.convert_tokens_to_ids(tokens)
        assert ours.convert_tokens_to_ids(tokens) == ref(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(ours(text)["input_ids"], skip_special_tokens=True) == ref.decode(
            ref(text)["input_ids"], skip_special_tokens=True
        )
    assert ours.tokenize("a cat", add_special_tokens=True) == ref.tokenize("a cat", add_special_tokens=True)
    for token in ("[CLS]", "cat", "no-such-token-here"):
        assert ours.convert_tokens_to_ids(token) == ref.convert_tokens_to_ids(token)


def _unit_float_photo() -> np.ndarray:
    """(H, W, 3) float32 in [0, 1], an image already scaled (by ToTensor, or a model's output), whose values are
    not multiples of 1/255: resizing has to cut x * 255 to uint8 exactly as transformers does."""
    jitter = np.random.default_rng(0).uniform(0.0, 0.9, size=(PHOTO.height, PHOTO.width, 3))
    return ((np.asarray(PHOTO, dtype=np.float64) + jitter) / 256.0).astype(np.float32)


IMAGE_CALLS = [
    (PHOTO, {"return_tensors": "np"}),
    (PHOTO, {"return_tensors": "pt", "do_resize": False}),
    (PHOTO, {"return_tensors": "pt", "size": {"height": 80, "width": 100}, "crop_size": {"height": 64, "width": 72}}),
    (PHOTO, {"return_tensors": "pt", "do_center_crop": False, "size": {"height": 50, "width": 60}}),
    (PHOTO, {"return_tensors": "pt", "do_rescale": False}),
    (PHOTO, {"return_tensors": "pt", "rescale_factor": 1 / 255, "rescale_offset": False}),
    (
        PHOTO,
        {"return_tensors": "np", "do_normalize": True, "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25]},
    ),
    (PHOTO, {"return_tensors": "pt", "do_normalize": True, "image_mean": 0.5, "image_std": 0.25}),
    (PHOTO, {"return_tensors": "pt", "resample": PIL.Image.Resampling.BICUBIC}),
    (_unit_float_photo(), {"return_tensors": "pt", "do_rescale": False}),
    (_unit_float_photo(), {"return_tensors": "pt", "do_rescale": False, "do_resize": False, "do_normalize": True}),
    ([PHOTO, PHOTO.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)], {"return_tensors": "np", "do_resize": False}),
]


@pytest.mark.parametrize(("images", "kwargs"), IMAGE_CALLS, ids=[str(sorted(k)) for _, k in IMAGE_CALLS])
def test_image_options_have_transformers_meaning(processors, images, kwargs):
    ours, ref = processors
    got, want = ours(images=images, **kwargs), ref(images=images, **kwargs)
    assert_same_batch(got, want, atol=1e-6)
    # The same options straight on the image processor, as transformers code also calls it.
    assert_same_batch(ours.image_processor(images, **kwargs), ref.image_processor(images, **kwargs), atol=1e-6)


def test_processor_text_and_images_as_numpy(processors):
    ours, ref = processors
    kwargs = {"text": SHORT, "images": [PHOTO] * 3, "return_tensors": "np", "padding": True}
    assert_same_batch(ours(**kwargs), ref(**kwargs), atol=1e-6)


@pytest.mark.parametrize(
    ("option", "error", "words"),
    [
        ({"do_pan_and_scan": True}, TypeError, "do_pan_and_scan"),
        ({"size": {"shortest_edge": 300}}, ValueError, "size"),
        ({"data_format": "channels_last"}, ValueError, "data_format"),
        ({"do_rescale": "yes"}, ValueError, "do_rescale"),
    ],
)
def test_options_that_cannot_be_honoured_are_named(processors, option, error, words):
    ours, _ = processors
    with pytest.raises(error, match=words):
        ours(images=PHOTO, **option)
    with pytest.raises(error, match=words):
        ours(text="a cat", **option)  # checked even when no image comes with it
