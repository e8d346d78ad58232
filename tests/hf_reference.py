"""Build transformers reference models with random weights that make parity tests meaningful."""

from __future__ import annotations

import torch


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm random running stats and affine params, every LayerNorm random params, and
    the temperature a value far from 1, so that a swapped or skipped tensor shows up in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(torch.rand(m.normalized_shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.normalized_shape, generator=g) * 0.1)
        if hasattr(model, "temperature"):
            model.temperature.fill_(0.0734)


def hf_align_config(**vision_overrides):
    """transformers' AlignConfig with align-base's config.json values (AlignConfig() defaults differ in
    image_size and hidden_dim)."""
    from transformers import AlignConfig

    vision = dict(image_size=289, hidden_dim=640, **vision_overrides)
    return AlignConfig(vision_config=vision)


def hf_align_model(seed: int = 0, config=None, attn_implementation: str = "eager"):
    from transformers import AlignModel

    torch.manual_seed(seed)
    config = config or hf_align_config()
    config._attn_implementation = attn_implementation
    for sub in (config.text_config, config.vision_config):
        sub._attn_implementation = attn_implementation
    model = AlignModel(config)
    randomize_(model, seed)
    return model.eval()
