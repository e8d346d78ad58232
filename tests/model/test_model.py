"""Generic model tests on the tiny config: shapes, gradients, checkpointing, configs, bad inputs."""

from __future__ import annotations

import pytest
import torch

from align_torch import AlignConfig, AlignModel, TextConfig, VisionConfig, preset


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return AlignModel(preset("align-tiny"))


def _batch(B: int = 3, size: int = 64, T: int = 10):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, T // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(B, 3, size, size, generator=g)}


def _smoothed_cross_entropy(logits: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label-smoothed cross-entropy with the diagonal as targets, written out from its definition: the target
    distribution puts 1 - smoothing + smoothing / n on the positive and smoothing / n on each other column."""
    n = logits.shape[0]
    target = torch.full((n, n), smoothing / n) + torch.eye(n) * (1 - smoothing)
    log_p = logits - logits.exp().sum(dim=1, keepdim=True).log()  # (n, n) log-softmax over columns
    return -(target * log_p).sum(dim=1).mean()


def test_output_shapes_and_normalisation(tiny):
    batch = _batch()
    with torch.no_grad():
        tiny.temperature.fill_(0.25)  # not 1, so a missing or inverted division shows
    out = tiny.eval()(**batch, return_loss=True)
    assert out.logits_per_image.shape == (3, 3) and out.logits_per_text.shape == (3, 3)
    # The logits against embeddings computed apart, one tower at a time, and ALIGN's temperature.
    image = torch.nn.functional.normalize(tiny.get_image_features(pixel_values=batch["pixel_values"]), dim=-1)
    text = torch.nn.functional.normalize(tiny.get_text_features(batch["input_ids"], batch["attention_mask"]), dim=-1)
    expected = text @ image.t() / tiny.temperature.detach()  # (texts, images)
    torch.testing.assert_close(out.logits_per_text, expected)
    torch.testing.assert_close(out.logits_per_image, expected.t())
    assert torch.equal(out.logits_per_image, out.logits_per_text.t())
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(3))
    # The loss: the mean of the two directions' label-smoothed cross-entropies (align-base's smoothing 0.1).
    assert tiny.config.label_smoothing == 0.1
    by_hand = (_smoothed_cross_entropy(expected, 0.1) + _smoothed_cross_entropy(expected.t(), 0.1)) / 2
    assert out.loss.ndim == 0
    torch.testing.assert_close(out.loss, by_hand)
    assert out["loss"] is out.loss
    assert tiny.get_image_features(pixel_values=_batch()["pixel_values"]).shape == (3, 80)


def test_every_used_parameter_gets_a_gradient(tiny):
    tiny.train()
    tiny(**_batch(), return_loss=True).loss.backward()
    no_grad = {k for k, p in tiny.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()}
    assert no_grad == {"text_model.pooler.weight", "text_model.pooler.bias"}


def _deterministic(model: AlignModel) -> AlignModel:
    """Train mode with dropout and drop-path off, so two runs see the same function."""
    model.train()
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout) or mod.__class__.__name__ == "DropPath":
            mod.p = 0.0
    return model


def test_grad_checkpointing_changes_no_gradient(tiny):
    ref = AlignModel(preset("align-tiny"))
    ref.load_state_dict(tiny.state_dict())
    _deterministic(ref)
    _deterministic(tiny).set_grad_checkpointing(True)
    batch = _batch()
    ref(**batch, return_loss=True).loss.backward()
    tiny(**batch, return_loss=True).loss.backward()
    ref_params = dict(ref.named_parameters())
    for k, p in tiny.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, ref_params[k].grad, rtol=0, atol=1e-6, msg=k)


def test_configs_roundtrip_and_validate():
    cfg = preset("align-base")
    assert AlignConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.vision.num_blocks == 55 and cfg.vision.num_features == 640
    assert VisionConfig().channels(32) == 64  # B7 stem
    with pytest.raises(ValueError, match="unknown vision config fields"):
        AlignConfig.from_dict({"vision": {"widht_mult": 2.0}})
    with pytest.raises(ValueError, match="multiple of num_heads"):
        TextConfig(hidden_size=100, num_heads=12)
    with pytest.raises(ValueError, match="pooling"):
        VisionConfig(pooling="median")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("align-huge")


def test_bad_inputs_name_the_problem(tiny):
    b = _batch()
    with pytest.raises(ValueError, match="needs both input_ids and pixel_values"):
        tiny(input_ids=b["input_ids"])
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, channels, height, width\)"):
        tiny.encode_image(b["pixel_values"][0])
    with pytest.raises(ValueError, match="longer than the model's 64 positions"):
        tiny.encode_text(torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        tiny.encode_text(b["input_ids"], b["attention_mask"][:, :3])


def test_padding_does_not_change_text_embeddings(tiny):
    """Extra padding (masked) leaves the [CLS] embedding unchanged: the mask reaches every layer."""
    tiny.eval()
    ids = torch.tensor([[101, 7, 8, 9, 102]])
    padded = torch.cat([ids, torch.zeros(1, 11, dtype=torch.long)], dim=1)
    mask = (padded != 0).long()
    with torch.no_grad():
        a = tiny.encode_text(ids)
        b = tiny.encode_text(padded, mask)
        c = tiny.encode_text(padded, torch.ones_like(padded))  # attended padding does change it
        d = tiny.encode_text(padded)  # no mask: the pad id marks the padding (open_clip callers pass ids only)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a, d, rtol=0, atol=1e-6)
    assert not torch.allclose(a, c, atol=1e-4)
