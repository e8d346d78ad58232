"""AlignModel refuses bad arguments by name and range before either tower runs, and takes no unknown keyword."""

from __future__ import annotations

import pytest
import torch

from align_torch import AlignModel
from align_torch.model.config import align_base, align_tiny
from align_torch.model.input_checks import min_image_size


@pytest.fixture(scope="module")
def tiny() -> AlignModel:
    torch.manual_seed(0)
    return AlignModel(align_tiny()).eval()


@pytest.fixture
def guarded(tiny, monkeypatch) -> AlignModel:
    """The tiny model with both towers replaced by a tripwire: a check that runs late fails the test."""

    def tripwire(*args, **kwargs):
        raise AssertionError("a tower ran before the arguments were checked")

    monkeypatch.setattr(tiny.text_model, "forward", tripwire)
    monkeypatch.setattr(tiny.vision_model, "forward", tripwire)
    return tiny


def _text(batch: int = 2, length: int = 7) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 1000, (batch, length), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def _pixels(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(
    "change,words",
    [
        (
            {"input_ids": torch.tensor([[101, 1000, 102]])},
            r"input_ids must lie in \[0, 999\] \(vocab_size = 1000\), got .*1000\]",
        ),
        ({"input_ids": torch.tensor([[101, -1, 102]])}, r"input_ids must lie in \[0, 999\].*\[-1, "),
        ({"input_ids": torch.tensor([[1.0, 2.0]])}, "input_ids must be an integer tensor"),
        ({"input_ids": torch.zeros(0, 5, dtype=torch.long)}, "input_ids is an empty batch"),
        (
            {"input_ids": torch.ones(1, 65, dtype=torch.long)},
            r"65 tokens is longer than the model's 64 positions \(max_position_embeddings",
        ),
        ({"input_ids": None}, "input_ids is required"),
        ({"token_type_ids": torch.full((2, 7), 2)}, r"token_type_ids must lie in \[0, 1\] \(type_vocab_size = 2\)"),
        (
            {"attention_mask": torch.ones(2, 6, dtype=torch.long)},
            r"attention_mask shape \(2, 6\) != input_ids shape \(2, 7\)",
        ),
    ],
)
def test_bad_text_is_named_with_its_range(guarded, change, words):
    text = {**_text(), **change}
    for call in (guarded.get_text_features, guarded.encode_text):
        with pytest.raises(ValueError, match=words):
            call(**text)
    if text["input_ids"] is not None:
        with pytest.raises(ValueError, match=words):
            guarded(**text, pixel_values=_pixels())


@pytest.mark.parametrize(
    "pixels,words",
    [
        (torch.zeros(0, 3, 64, 64), "pixel_values is an empty batch"),
        (torch.zeros(2, 1, 64, 64), r"1 channels; the image tower takes 3 \(in_chans\)"),
        (torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "floating-point tensor, got torch.uint8"),
        (torch.zeros(3, 64, 64), r"\(batch, channels, height, width\)"),
        (None, "pixel_values is required"),
    ],
)
def test_bad_pixels_are_named(guarded, pixels, words):
    with pytest.raises(ValueError, match=words):
        guarded.get_image_features(pixel_values=pixels)


def test_too_small_images_are_refused_at_the_smallest_size_that_would_fail(tiny, guarded):
    """The computed smallest size runs; one pixel less is refused by name (it would fail inside a conv)."""
    smallest = min_image_size(tiny.config.vision)
    assert 2 <= smallest <= 64
    with pytest.raises(ValueError, match=rf"{smallest}×{smallest - 1}; the image tower needs at least {smallest}×"):
        guarded.encode_image(torch.zeros(1, 3, smallest, smallest - 1))
    with pytest.raises(ValueError, match="needs at least"):
        guarded.encode_image(torch.zeros(1, 3, smallest - 1, smallest))


def test_smallest_size_is_exact(tiny):
    """At the smallest size the towers run; one pixel less, the real tower fails (so the bound is not loose)."""
    smallest = min_image_size(tiny.config.vision)
    with torch.no_grad():
        assert tiny.vision_model(torch.zeros(1, 3, smallest, smallest)).pooler_output.shape[0] == 1
        with pytest.raises(RuntimeError):
            tiny.vision_model(torch.zeros(1, 3, smallest - 1, smallest - 1))
    base = min_image_size(align_base().vision)
    assert 2 <= base < 289


def test_loss_needs_as_many_texts_as_images(guarded):
    with pytest.raises(ValueError, match=r"input_ids batch 2 and pixel_values batch 3"):
        guarded(**_text(2), pixel_values=_pixels(3), return_loss=True)


def test_logits_without_loss_take_different_batch_sizes(tiny):
    with torch.no_grad():
        out = tiny(**_text(2), pixel_values=_pixels(3))
    assert out.logits_per_image.shape == (3, 2)


@pytest.mark.parametrize("method", ["forward", "get_text_features", "get_image_features"])
def test_unknown_keywords_are_a_type_error_naming_them(guarded, method):
    kwargs = {
        "forward": {**_text(), "pixel_values": _pixels()},
        "get_text_features": _text(),
        "get_image_features": {"pixel_values": _pixels()},
    }[method]
    kwargs["attention_masks"] = torch.ones(2, 7)
    with pytest.raises(TypeError, match=f"AlignModel.{method} got unexpected keyword arguments: attention_masks"):
        getattr(guarded, method)(**kwargs)


@pytest.mark.parametrize(
    ("method", "flag"),
    [
        ("forward", {"head_mask": 1}),
        ("get_text_features", {"output_hidden_states": True}),
        ("get_image_features", {"return_dict": False}),
    ],
)
def test_unsupported_transformers_flags_point_to_the_forward_flags(guarded, method, flag):
    kwargs = {"forward": {**_text(), "pixel_values": _pixels()}, "get_text_features": _text()}
    with pytest.raises(ValueError, match="output_hidden_states / output_attentions"):
        getattr(guarded, method)(**kwargs.get(method, {"pixel_values": _pixels()}), **flag)


def test_transformers_flags_at_their_defaults_are_accepted(tiny):
    with torch.no_grad():
        plain = tiny(**_text(), pixel_values=_pixels())
        flagged = tiny(
            **_text(), pixel_values=_pixels(), output_hidden_states=False, output_attentions=None, return_dict=True
        )
        feats = tiny.get_text_features(**_text(), output_attentions=False)
    assert torch.equal(plain.logits_per_image, flagged.logits_per_image)
    assert torch.equal(feats, tiny.get_text_features(**_text()))
