"""token_attributions: integrated gradients are complete (scores sum to cos - baseline cos within 1% at 32
steps, tiny and align-base, real photos); rollout is a distribution over the real tokens from [CLS]."""

from __future__ import annotations

import pytest
import torch

from align_torch import AlignModel, preset, token_attributions
from tests.inspect.test_similarity_map import photos, texts


def check_completeness(model: AlignModel, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> None:
    result = token_attributions(model, pixels, ids, mask, steps=32)
    assert result.scores.shape == ids.shape
    assert (result.scores[mask == 0] == 0).all()  # padding is its own baseline
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
    assert torch.allclose(result.cosine, (out.image_embeds * out.text_embeds).sum(-1), atol=1e-5)
    delta = result.cosine - result.baseline_cosine
    assert (delta.abs() > 1e-4).all()  # something to explain: the relative error is meaningful
    print("completeness error", result.completeness_error.tolist(), "delta", delta.tolist())
    assert (result.completeness_error < 0.01).all(), result.completeness_error
    assert torch.allclose(result.scores.sum(dim=1), delta, rtol=0.01, atol=0)


def test_integrated_gradients_are_complete_tiny():
    torch.manual_seed(0)
    model = AlignModel(preset("align-tiny")).eval()
    ids, mask = texts(3, 12, 1000)
    check_completeness(model, photos(64), ids, mask)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_integrated_gradients_are_complete_align_base():
    torch.manual_seed(0)
    model = AlignModel(preset("align-base")).eval()
    ids, mask = texts(3, 16, model.config.text.vocab_size, seed=1)
    check_completeness(model, photos(289), ids, mask)


def test_rollout_and_bad_arguments():
    torch.manual_seed(0)
    model = AlignModel(preset("align-tiny")).eval()
    ids, mask = texts(3, 12, 1000)
    result = token_attributions(model, photos(64), ids, mask, method="rollout")
    assert result.scores.shape == ids.shape and result.completeness_error.isnan().all()
    assert (result.scores[mask == 0] == 0).all()
    # each row of the flow is a distribution; padded keys get no attention, so the real tokens hold all of it
    assert torch.allclose(result.scores.sum(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="method must be one of"):
        token_attributions(model, photos(64), ids, mask, method="saliency")
    with pytest.raises(ValueError, match="steps"):
        token_attributions(model, photos(64), ids, mask, steps=0)
