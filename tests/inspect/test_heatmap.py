"""Similarity heatmaps: Grad-CAM equals its closed form at the last block, follows the image's layout, and
leaves the model as it found it; the overlay helper draws it over an image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from align_torch import AlignModel, preset
from align_torch.inspect.heatmap import colorize, overlay, similarity_heatmap, to_image


@pytest.fixture(scope="module")
def model() -> AlignModel:
    torch.manual_seed(0)
    return AlignModel(preset("align-tiny")).eval()


def inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, 64, 64, generator=g) * 2 - 1
    ids = torch.randint(104, 1000, (batch, 8), generator=g)
    ids[:, 0] = 101
    return pixels, ids


def test_last_block_equals_the_closed_form(model):
    """The image embedding is the mean of the last map A (no image projection), so d cos / d A is the same
    at every position: (t - cos * e) / |v| / (h w) with v = mean(A), e = v / |v|. Grad-CAM is then
    relu(A . that gradient) up to a positive factor, which the [0, 1] scaling removes."""
    pixels, ids = inputs()
    heat = similarity_heatmap(model, pixels, ids, method="gradcam")
    with torch.no_grad():
        A = model.vision_model.forward_features(pixels)  # (B, C, h, w)
        t = model.encode_text(ids, normalize=True)  # (B, C)
        v = A.mean(dim=(2, 3))  # (B, C)
        e = F.normalize(v, dim=-1)
        grad_v = (t - (e * t).sum(-1, keepdim=True) * e) / v.norm(dim=-1, keepdim=True)  # (B, C)
        cam = F.relu(torch.einsum("bc,bchw->bhw", grad_v, A))[:, None]  # (B, 1, h, w)
        cam = F.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
        ref = cam / cam.amax(dim=(1, 2), keepdim=True)
    assert heat.shape == (2, 64, 64)
    assert torch.allclose(heat, ref, atol=1e-4), (heat - ref).abs().max()


def test_default_draws_the_exact_map(model):
    """With no block or stage the heatmap is the exact map (each location's share of the cosine, computed here
    from the last feature map), its positive part upsampled and scaled to a maximum of 1."""
    pixels, ids = inputs(seed=3)
    heat = similarity_heatmap(model, pixels, ids)
    with torch.no_grad():
        A = model.vision_model.forward_features(pixels)  # (B, C, h, w)
        t = model.encode_text(ids, normalize=True)  # (B, C)
        v = A.mean(dim=(2, 3))  # (B, C)
        share = torch.einsum("bc,bchw->bhw", t, A) / v.norm(dim=-1)[:, None, None] / A[0, 0].numel()  # (B, h, w)
        shown = F.interpolate(F.relu(share)[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
        ref = shown / shown.amax(dim=(1, 2), keepdim=True)
    assert torch.allclose(heat, ref, atol=1e-4), (heat - ref).abs().max()
    assert not torch.allclose(heat, similarity_heatmap(model, pixels, ids, method="gradcam"), atol=1e-2)


def test_regions_without_activation_get_zero_and_the_layout_is_kept(model):
    """Silence the left half of a stage-1 map (a hook zeroes it): the left of the heatmap must be 0 and the
    right must not be; a transposed or mis-sized map fails this."""
    pixels, ids = inputs(seed=1)
    target = model.vision_model.blocks[model.vision_model.stage_ends[1]]

    def silence_left(_m, _args, out):
        out = out.clone()
        out[..., : out.shape[-1] // 2] = 0
        return out

    handle = target.register_forward_hook(silence_left)
    try:
        heat = similarity_heatmap(model, pixels, ids, stage=1)
    finally:
        handle.remove()
    assert heat[..., :28].abs().max() == 0  # bilinear upsampling blurs only the columns next to the cut
    assert (heat[..., 36:].amax(dim=(1, 2)) > 0.5).all()


def test_range_modes_and_gradients_are_left_alone(model):
    pixels, ids = inputs(batch=3)
    model.train()
    model.text_model.eval()  # a mixed state must come back exactly as it was
    before = {name: m.training for name, m in model.named_modules()}
    try:
        heat = similarity_heatmap(model, pixels, ids[:1], block=4)  # one text for all images
    finally:
        after = {name: m.training for name, m in model.named_modules()}
        model.eval()
    assert after == before
    assert all(p.grad is None for p in model.parameters())
    assert not heat.requires_grad
    assert heat.shape == (3, 64, 64) and heat.min() >= 0 and heat.max() <= 1
    assert torch.allclose(heat.amax(dim=(1, 2)), torch.ones(3))


def test_stage_selects_the_last_block_of_that_stage(model):
    pixels, ids = inputs()
    end = model.vision_model.stage_ends[2]
    assert torch.equal(
        similarity_heatmap(model, pixels, ids, stage=2), similarity_heatmap(model, pixels, ids, block=end)
    )
    assert not torch.allclose(similarity_heatmap(model, pixels, ids, stage=2), similarity_heatmap(model, pixels, ids))


def test_frozen_model_still_gets_a_heatmap(model):
    pixels, ids = inputs()
    model.requires_grad_(False)
    try:
        heat = similarity_heatmap(model, pixels, ids)
    finally:
        model.requires_grad_(True)
    assert heat.amax() == 1


def test_bad_requests_say_what_is_wrong(model):
    pixels, ids = inputs()
    with pytest.raises(IndexError, match="block 10 out of range for 10 blocks"):
        similarity_heatmap(model, pixels, ids, block=10)
    with pytest.raises(IndexError, match="stage 7 out of range"):
        similarity_heatmap(model, pixels, ids, stage=7)
    with pytest.raises(ValueError, match="1 or 2 texts"):
        similarity_heatmap(model, pixels, torch.ones(3, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha must be in"):
        overlay(Image.new("RGB", (4, 4)), np.zeros((4, 4)), alpha=2)


def test_overlay_and_colours():
    image = Image.fromarray(np.full((40, 60, 3), 128, dtype=np.uint8))
    heat = torch.zeros(20, 30)
    heat[:, 15:] = 1.0  # right half hot
    out = overlay(image, heat, alpha=1.0)
    assert out.size == (60, 40) and out.mode == "RGB"
    arr = np.asarray(out)
    assert tuple(arr[20, 5]) == tuple(colorize(np.zeros((1, 1)))[0, 0])  # cold: dark blue
    red, green, blue = arr[20, 55]
    assert red > 100 and green == 0 and blue == 0  # hot: red
    assert np.array_equal(np.asarray(overlay(image, heat, alpha=0.0)), np.asarray(image))


def test_to_image_undoes_the_rescale():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    pixels = torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1  # the processor's rescale
    assert np.array_equal(np.asarray(to_image(pixels)), rgb)
