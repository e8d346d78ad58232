"""Deletion and insertion curves: the cells go in the map's order and layout, the curves start and end at the
clean and the baseline image's cosines, the area is the trapezoid of the curve, and every map method runs."""

from __future__ import annotations

import pytest
import torch

from align_torch import AlignModel, deletion_auc, insertion_auc, preset
from align_torch.inspect.faithfulness import masked_inputs
from tests.inspect.test_similarity_map import photos, texts


@pytest.fixture(scope="module")
def model() -> AlignModel:
    torch.manual_seed(0)
    return AlignModel(preset("align-tiny")).eval()


def test_cells_are_removed_in_the_maps_order_and_layout():
    pixels = torch.rand(1, 3, 8, 12) + 1  # all values above the baseline 0
    maps = torch.tensor([[[5.0, 4.0, 0.0], [3.0, 2.0, 1.0]]])  # (1, 2, 3): the left two columns first
    first = masked_inputs(pixels, maps, 1, insert=False)
    assert (first[..., :4, :4] == 0).all() and (first[..., :4, 4:] > 0).all() and (first[..., 4:, :] > 0).all()
    four = masked_inputs(pixels, maps, 4, insert=False)
    assert (four[..., :8] == 0).all() and (four[..., 8:] > 0).all()
    revealed = masked_inputs(pixels, maps, 4, insert=True)
    assert torch.equal(revealed[..., :8], pixels[..., :8]) and (revealed[..., 8:] == 0).all()


@pytest.mark.parametrize("method", ["exact", "gradcam", "gradient_x_input", "random"])
def test_curves_for_every_method(model, method):
    pixels = photos(64)
    ids, mask = texts(3, 12, 1000)
    with torch.no_grad():
        clean = model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
        grey = model(input_ids=ids, pixel_values=torch.zeros_like(pixels), attention_mask=mask)
    clean_cos = (clean.image_embeds * clean.text_embeds).sum(-1)
    grey_cos = (grey.image_embeds * grey.text_embeds).sum(-1)
    deletion = deletion_auc(model, pixels, ids, mask, maps=method, steps=4)
    insertion = insertion_auc(model, pixels, ids, mask, maps=method, steps=4)
    assert torch.allclose(deletion.cosines[:, 0], clean_cos, atol=1e-5)
    assert torch.allclose(deletion.cosines[:, -1], grey_cos, atol=1e-5)
    assert torch.allclose(insertion.cosines[:, 0], grey_cos, atol=1e-5)
    assert torch.allclose(insertion.cosines[:, -1], clean_cos, atol=1e-5)
    f, c = deletion.fractions, deletion.cosines
    want = ((c[:, 1:] + c[:, :-1]) / 2 * (f[1:] - f[:-1])).sum(dim=1)
    assert torch.allclose(deletion.auc, want, atol=1e-6)
    assert f[0] == 0 and f[-1] == 1


def test_the_order_matters(model):
    """Deleting the best-ranked cells first and the worst first give different curves, mirror images in the
    sense that the first step of one removes the cell the other removes last."""
    pixels = photos(64)
    ids, mask = texts(3, 12, 1000)
    maps = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0))
    best = deletion_auc(model, pixels, ids, mask, maps=maps, steps=16)
    worst = deletion_auc(model, pixels, ids, mask, maps=-maps, steps=16)
    assert not torch.allclose(best.cosines[:, 1:-1], worst.cosines[:, 1:-1])
    with pytest.raises(ValueError, match="one per image"):
        deletion_auc(model, pixels, ids, mask, maps=maps[:2])
