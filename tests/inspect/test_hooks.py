"""Hooks on named sites: capture reads the values forward_intermediates returns, a zeroing patch equals editing
the module, head and channel ablations zero what they name, activation patching moves the cosine from the
target's to the source's, and no hook stays behind (also after an exception)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from align_torch import AlignModel, ablate_channels, ablate_heads, capture, patch, patch_from, preset
from tests.inspect.test_similarity_map import photos, texts


@pytest.fixture(scope="module")
def model() -> AlignModel:
    torch.manual_seed(0)
    return AlignModel(preset("align-tiny")).eval()


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    ids, mask = texts(3, 12, 1000)
    return {"pixel_values": photos(64), "input_ids": ids, "attention_mask": mask}


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class Zeros(nn.Module):
    def forward(self, x: torch.Tensor, *rest: object) -> torch.Tensor:
        return torch.zeros_like(x)


def test_capture_reads_the_values_forward_intermediates_returns(model, inputs):
    sites = ["vision_model.stem", "vision_model.blocks.3", "text_model.layers.1", "text_model.layers.0.attn:probs"]
    before = hook_count(model)
    with torch.no_grad(), capture(model, sites) as cache:
        model(**inputs)  # the plain forward: SDPA unless the :probs site forces the eager path
    assert hook_count(model) == before
    with torch.no_grad():
        ref = model.forward_intermediates(**inputs)
    assert torch.equal(cache["vision_model.stem"], ref.image_hidden_states[0])
    assert torch.equal(cache["vision_model.blocks.3"], ref.image_hidden_states[4])
    assert torch.allclose(cache["text_model.layers.1"], ref.text_hidden_states[2], atol=1e-6)
    assert torch.allclose(cache["text_model.layers.0.attn:probs"], ref.text_attentions[0], atol=1e-6)
    with pytest.raises(KeyError, match="did not run"):
        cache["vision_model.blocks.4"]


@pytest.mark.parametrize(
    ("site", "edit"),
    [
        ("vision_model.blocks.3.se", lambda m: m.vision_model.blocks[3].__setattr__("se", Zeros())),
        ("text_model.layers.0.mlp", lambda m: m.text_model.layers[0].__setattr__("mlp", Zeros())),
        ("text_model.layers.1.attn:heads", lambda m: m.text_model.layers[1].attn.__setattr__("heads_site", Zeros())),
        ("text_model.layers.1.attn:probs", lambda m: m.text_model.layers[1].attn.__setattr__("probs_site", Zeros())),
    ],
)
def test_a_zeroing_patch_equals_editing_the_module(model, inputs, site, edit):
    edited = copy.deepcopy(model)
    edit(edited)
    with torch.no_grad():
        # the edited :probs module runs on the eager path only: both sides take it (SDPA rounds differently)
        want_text = edited.text_model(inputs["input_ids"], inputs["attention_mask"], output_attentions=True)
        want = edited(**inputs)
        with patch(model, {site: torch.zeros_like}):
            got_text = model.text_model(inputs["input_ids"], inputs["attention_mask"], output_attentions=True)
            got = model(**inputs)
        plain = model(**inputs)
    assert torch.equal(got_text.last_hidden_state, want_text.last_hidden_state)
    if not site.endswith(":probs"):
        assert torch.equal(got.logits_per_image, want.logits_per_image)
    assert not torch.allclose(got.logits_per_image, plain.logits_per_image)  # the site mattered


def test_ablate_heads_and_channels(model, inputs):
    attn = model.text_model.layers[0].attn
    with torch.no_grad(), ablate_heads(model, {0: [1, 3]}), capture(model, ["text_model.layers.0.attn:heads"]) as c:
        model(**inputs)
    heads = c["text_model.layers.0.attn:heads"]  # (B, H, T, hd): the capture sees the ablated value
    assert heads[:, [1, 3]].abs().max() == 0 and heads[:, [0, 2]].abs().min() >= 0 and heads[:, 0].abs().max() > 0
    with (
        torch.no_grad(),
        ablate_heads(model, {0: range(attn.num_heads)}),
        capture(model, ["text_model.layers.0.attn"]) as c,
    ):
        model(**inputs)
    out = c["text_model.layers.0.attn"]  # every head gone: only the output projection's bias is left
    assert torch.allclose(out, attn.out.bias.expand_as(out))
    site = "vision_model.blocks.2"
    with torch.no_grad(), capture(model, [site]) as clean:
        model(**inputs)
    with torch.no_grad(), ablate_channels(model, site, [0, 5]), capture(model, [site]) as cut:
        model(**inputs)
    assert cut[site][:, [0, 5]].abs().max() == 0 and clean[site][:, [0, 5]].abs().max() > 0
    keep = [c for c in range(clean[site].shape[1]) if c not in (0, 5)]
    assert torch.equal(cut[site][:, keep], clean[site][:, keep])
    with pytest.raises(ValueError, match="out of range"):
        with ablate_heads(model, {7: [0]}):
            pass
    with pytest.raises(ValueError, match="out of range"), torch.no_grad(), ablate_channels(model, site, [999]):
        model(**inputs)


def test_patch_from_moves_the_cosine_to_the_source(model, inputs):
    source = dict(inputs)
    target = {**inputs, "pixel_values": inputs["pixel_values"].roll(1, dims=0)}
    # the whole image tower's output carries all of the image: patching it gives exactly the source cosine
    full = patch_from(model, source, ["vision_model"], target_inputs=target)
    assert torch.allclose(full.patched, full.source, atol=1e-6)
    assert torch.allclose(full.restored, torch.ones(3), atol=1e-4)
    assert full.effect == pytest.approx(float((full.source - full.clean).mean()), abs=1e-6)
    assert abs(full.effect) > 1e-4
    early = patch_from(model, source, ["vision_model.stem"], target_inputs=target)
    assert torch.allclose(early.patched, early.source, atol=1e-5)  # everything after the stem is recomputed
    with pytest.raises(ValueError, match="same batch size"):
        patch_from(model, source, ["vision_model.stem"], target_inputs={k: v[:2] for k, v in target.items()})


def test_no_hook_stays_behind_also_on_errors(model, inputs):
    before = hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, ["vision_model.blocks.1", "text_model.layers.0.attn:probs"]):
            assert hook_count(model) == before + 3  # two sites and the eager switch
            raise RuntimeError("boom")
    assert hook_count(model) == before
    with pytest.raises(RuntimeError, match="bad fn"):

        def bad(_value: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("bad fn")

        with torch.no_grad(), patch(model, {"vision_model.blocks.1": bad, "text_model.layers.0.mlp": torch.zeros_like}):
            model(**inputs)
    assert hook_count(model) == before
    with pytest.raises(ValueError, match="unknown site"):
        with capture(model, ["vision_model.stem", "vision_model.blocks.99"]):
            pass
    with pytest.raises(ValueError, match="attention module"):
        with capture(model, ["text_model.layers.0.mlp:probs"]):
            pass
    assert hook_count(model) == before
