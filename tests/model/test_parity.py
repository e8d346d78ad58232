"""Numerical parity with transformers' AlignModel at full align-base size (random weights, randomised
BatchNorm statistics and LayerNorm parameters, temperature 0.0734), fp32.

Tolerance: each tensor within 1e-5 of the reference's max magnitude."""

from __future__ import annotations

import copy

import pytest
import torch

from align_torch import AlignModel
from align_torch.checkpoint.hf_keys import hf_to_native
from tests.helpers.hf_reference import assert_close, smooth_images

pytestmark = pytest.mark.slow


def texts(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids padded to different lengths, [CLS]/[SEP] in place, non-zero token_type_ids."""
    g = torch.Generator().manual_seed(seed)
    T = 24
    ids = torch.randint(1000, 30522, (batch, T), generator=g)
    mask = torch.zeros(batch, T, dtype=torch.long)
    types = torch.zeros(batch, T, dtype=torch.long)
    for i in range(batch):
        n = T - 3 * i if batch > 1 else 11
        ids[i, 0], ids[i, n - 1], ids[i, n:] = 101, 102, 0
        mask[i, :n] = 1
        types[i, n // 2 : n] = 1  # a second segment
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Photo-like images in the processor's [-1, 1] range (white noise drives the randomly initialised
    tower's activations to ~1e6, where a relative tolerance says little about the small ones)."""
    return smooth_images(batch, size, seed)


def test_full_forward_batch5(hf_full, native_full):
    """Stem, all 55 blocks, all 12 text layers, features, normalised embeddings, logits and loss."""
    pixels, text = images(5, 289), texts(5)
    with torch.no_grad():
        ref = hf_full(**text, pixel_values=pixels, return_loss=True, output_hidden_states=True)
        out = native_full(**text, pixel_values=pixels, return_loss=True)
        vis = native_full.vision_model.forward_intermediates(pixels)
        txt = native_full.text_model(
            text["input_ids"], text["attention_mask"], text["token_type_ids"], output_hidden_states=True
        )
        img_feats = native_full.get_image_features(pixel_values=pixels)
        txt_feats = native_full.get_text_features(**text)

    ref_vis = ref.vision_model_output.hidden_states
    assert len(ref_vis) == len(vis.hidden_states) == 56
    assert vis.hidden_states[0].shape == (5, 64, 144, 144)
    assert vis.last_hidden_state.shape == (5, 640, 9, 9)
    for i, (a, b) in enumerate(zip(vis.hidden_states, ref_vis, strict=True)):
        assert_close(a, b, "stem" if i == 0 else f"block {i - 1}")
    ref_txt = ref.text_model_output.hidden_states
    assert len(ref_txt) == len(txt.hidden_states) == 13
    for i, (a, b) in enumerate(zip(txt.hidden_states, ref_txt, strict=True)):
        assert_close(a, b, "text embeddings" if i == 0 else f"text layer {i - 1}")

    assert_close(img_feats, ref.vision_model_output.pooler_output, "image features")
    assert_close(txt_feats, hf_full.text_projection(ref.text_model_output.last_hidden_state[:, 0]), "text features")
    for name in ("image_embeds", "text_embeds", "logits_per_image", "logits_per_text", "loss"):
        assert_close(getattr(out, name), getattr(ref, name), name)
    # The temperature is used as is (not exp'd): logits reach ~cos/0.0734.
    assert native_full.temperature.item() == pytest.approx(0.0734)


@pytest.mark.parametrize("size", [224, 301, 600])
def test_full_image_sizes(hf_full, native_full, size):
    """Other input sizes, batch 1: every block output and the image features (odd sizes exercise the
    asymmetric stride-2 padding on odd maps)."""
    pixels = images(1, size, seed=size)
    with torch.no_grad():
        ref = hf_full.vision_model(pixel_values=pixels, output_hidden_states=True)
        vis = native_full.vision_model.forward_intermediates(pixels)
        feats = native_full.encode_image(pixels)
    for i, (a, b) in enumerate(zip(vis.hidden_states, ref.hidden_states, strict=True)):
        assert_close(a, b, f"{size}px hidden state {i}")
    assert_close(feats, ref.pooler_output, f"{size}px image features")


def test_full_text_batch1_and_sdpa(hf_full, native_full):
    """Batch 1, no attention mask, no token types: the defaults agree too."""
    ids = texts(1)["input_ids"][:, :11]
    with torch.no_grad():
        ref = hf_full.get_text_features(input_ids=ids)
        ref = ref.pooler_output if hasattr(ref, "pooler_output") else ref
        ours = native_full.get_text_features(input_ids=ids)
    assert_close(ours, ref, "text features, batch 1")


def test_safetensors_and_bin_load_the_same(hf_full, hf_full_dir, native_full, tmp_path):
    """kakaobrain/align-base ships a .bin; save_pretrained writes safetensors. Both load to the same model."""
    hf_full.save_pretrained(tmp_path)
    from_st = AlignModel.from_pretrained(tmp_path)
    ours = native_full.state_dict()
    for k, v in from_st.state_dict().items():
        assert torch.equal(v, ours[k]), k
    pixels, text = images(1, 289, seed=3), texts(1, seed=3)
    with torch.no_grad():
        ref = hf_full(**text, pixel_values=pixels)
        out = from_st(**text, pixel_values=pixels)
    assert_close(out.logits_per_image, ref.logits_per_image, "logits from safetensors")


def _no_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.0
        if hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = 0.0
        if m.__class__.__name__ == "DropPath":
            m.p = 0.0


def test_full_training_mode_gradients(hf_full, native_full):
    """Train mode (batch-statistics BN) with dropout and drop-path off: the forward, and the gradient of every
    parameter after loss.backward(), equal transformers' within 1e-4 relative."""
    ref_model, ours_model = copy.deepcopy(hf_full).train(), copy.deepcopy(native_full).train()
    _no_dropout(ref_model)
    _no_dropout(ours_model)
    pixels, text = images(3, 160, seed=7), texts(3, seed=7)

    ref = ref_model(**text, pixel_values=pixels, return_loss=True)
    out = ours_model(**text, pixel_values=pixels, return_loss=True)
    assert_close(out.logits_per_text, ref.logits_per_text, "train-mode logits", tol=1e-4)
    assert_close(out.loss, ref.loss, "train-mode loss", tol=1e-4)
    ref.loss.backward()
    out.loss.backward()

    ref_grads = hf_to_native({k: p.grad for k, p in ref_model.named_parameters() if p.grad is not None})
    ours = dict(ours_model.named_parameters())
    unused = {k for k, p in ours.items() if p.grad is None}
    assert unused == {"text_model.pooler.weight", "text_model.pooler.bias"}  # ALIGN never uses the BERT pooler
    assert set(ref_grads) == set(ours) - unused
    errors = {}
    for k, g in ref_grads.items():
        # Relative to the gradient's norm, or to its module's weight gradient where that is larger: some bias
        # gradients are zero in exact arithmetic and rounding noise in both models (a key bias, which softmax
        # ignores; a project_bn bias, whose per-channel constant the next 1x1 conv + batch-statistics BN
        # removes).
        sibling = ref_grads.get(k.rsplit(".", 1)[0] + ".weight", g)
        scale = max(g.norm(), sibling.norm()).clamp_min(1e-30)
        errors[k] = ((ours[k].grad - g).norm() / scale).item()
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, f"grad of {worst}: relative error {errors[worst]:.3g} (tolerance 1e-4)"
    assert 0 < errors[worst]  # two separate computations, not one tensor compared with itself
