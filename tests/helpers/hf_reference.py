"""Build transformers reference models with random weights that make parity tests meaningful."""

from __future__ import annotations

import torch


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str, tol: float = 1e-5) -> None:
    """`ours` equals `ref` within `tol` of the reference's largest magnitude."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    scale = ref.abs().max().clamp_min(1e-12)
    err = ((ours - ref).abs().max() / scale).item()
    assert err <= tol, f"{what}: max error {err:.3g} of the reference's max magnitude (tolerance {tol})"


def smooth_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Images in [-1, 1] with structure at several scales (upsampled noise), a stand-in for photos."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(batch, 3, size, size)
    for cells in (2, 8, 32):
        noise = torch.randn(batch, 3, cells, cells, generator=g)
        out += torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    return torch.tanh(out / 2)


def calibrate_bn_(vision_model: torch.nn.Module, image_size: int, seed: int = 0, run=None) -> None:
    """Set every BatchNorm's running statistics to those of a batch of images, as training would.

    With transformers' random init (conv weights ~N(0, 0.02)) and arbitrary running statistics, the
    activations shrink block after block until the image embedding no longer depends on the image, and a
    parity test of it would pass whatever the code did. Measured statistics keep every block's output
    input-dependent."""
    bns = [m for m in vision_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    was_training = vision_model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    vision_model.train()
    with torch.no_grad():
        (run or vision_model)(smooth_images(8, image_size, seed))
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    vision_model.train(was_training)


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm measured-then-perturbed running stats and random affine params, every LayerNorm
    random params, and the temperature a value far from 1, so that a swapped or skipped tensor shows up in
    the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        if hasattr(model, "vision_model"):
            size = model.config.vision_config.image_size
            calibrate_bn_(model.vision_model, min(size, 160), seed, run=lambda x: model.vision_model(pixel_values=x))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                std = m.running_var.sqrt()
                m.running_mean.add_(torch.randn(m.num_features, generator=g) * 0.1 * std)
                m.running_var.mul_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
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
