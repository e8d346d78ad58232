"""similarity_map: the exact map sums to the image-text cosine (tiny and align-base, real photos), also through
an image projection; the gradient maps have the block's resolution; upsampling is a separate step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from align_torch import AlignModel, preset, similarity_map
from align_torch.inspect.heatmap import similarity_heatmap
from align_torch.inspect.similarity import upsample_map
from tests.helpers.job_data import photo


def photos(size: int, names: tuple[str, ...] = ("chelsea", "coffee", "astronaut")) -> torch.Tensor:
    """Real photos resized to size x size and rescaled as align-base's processor does (x / 127.5 - 1)."""
    arrays = [np.asarray(photo(n).convert("RGB").resize((size, size)), dtype=np.float32) for n in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1  # (B, 3, size, size)


def texts(batch: int, length: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(200, vocab, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    mask = torch.ones_like(ids)
    ids[0, length // 2 :], mask[0, length // 2 :] = 0, 0  # one padded text
    ids[0, length // 2 - 1] = 102
    return ids, mask


def cosines(model: AlignModel, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
    return (out.image_embeds * out.text_embeds).sum(-1).double()  # (B,)


@pytest.mark.parametrize("projection", [False, True])
def test_exact_map_sums_to_the_cosine_tiny(projection):
    torch.manual_seed(0)
    config = preset("align-tiny")
    if projection:  # a linear image projection with a bias: the decomposition must pass through it
        config = config.replace(projection_dim=48)
    model = AlignModel(config).eval()
    assert (model.image_projection is not None) == projection
    pixels = photos(64)
    ids, mask = texts(3, 12, 1000)
    maps = similarity_map(model, pixels, ids, mask)
    assert maps.shape == (3, 2, 2) and maps.dtype == torch.float32
    want = cosines(model, pixels, ids, mask)
    assert (maps.double().sum(dim=(1, 2)) - want).abs().max() <= 1e-5, (maps.sum(dim=(1, 2)), want)
    assert maps.std() > 1e-3  # locations differ: not one value spread evenly


@pytest.mark.slow
def test_exact_map_sums_to_the_cosine_align_base():
    torch.manual_seed(0)
    model = AlignModel(preset("align-base")).eval()
    pixels = photos(289)
    ids, mask = texts(3, 16, model.config.text.vocab_size, seed=1)
    maps = similarity_map(model, pixels, ids, mask)
    assert maps.shape == (3, 9, 9)  # 289 px: the stem's fixed padding gives 144, then four stride-2 stages
    want = cosines(model, pixels, ids, mask)
    assert (maps.double().sum(dim=(1, 2)) - want).abs().max() <= 1e-5, (maps.sum(dim=(1, 2)), want)


def test_gradient_maps_and_upsampling():
    torch.manual_seed(0)
    model = AlignModel(preset("align-tiny")).eval()
    pixels = photos(64)
    ids, mask = texts(3, 12, 1000)
    with torch.no_grad():
        hidden = model.vision_model.forward_intermediates(pixels).hidden_states
    h, w = hidden[model.vision_model.stage_ends[1] + 1].shape[-2:]  # hidden_states[i + 1]: block i's output
    cam = similarity_map(model, pixels, ids, mask, method="gradcam", stage=1)
    assert cam.shape == (3, h, w)
    # gradcam is today's heatmap before its display step: the same numbers once upsampled and scaled
    shown = similarity_heatmap(model, pixels, ids, mask, stage=1)
    assert torch.allclose(upsample_map(cam, (64, 64), normalize=True), shown, atol=1e-6)
    gxi = similarity_map(model, pixels, ids, mask, method="gradient_x_input", block=2)
    assert gxi.shape[0] == 3 and gxi.abs().max() > 0
    with pytest.raises(ValueError, match="method must be one of"):
        similarity_map(model, pixels, ids, mask, method="saliency")
    with pytest.raises(ValueError, match="last feature map"):
        similarity_map(model, pixels, ids, mask, block=2)


def test_exact_map_refuses_max_pooling():
    config = preset("align-tiny")
    config = config.replace(vision=config.vision.__class__(**{**config.vision.__dict__, "pooling": "max"}))
    model = AlignModel(config).eval()
    ids, mask = texts(1, 8, 1000)
    with pytest.raises(ValueError, match="pooling"):
        similarity_map(model, photos(64, ("chelsea",)), ids, mask)
