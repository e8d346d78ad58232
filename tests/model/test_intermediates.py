"""AlignModel.forward_intermediates: every intermediate equals transformers' (`output_hidden_states=True,
output_attentions=True`, eager attention), selection and early stopping run only what is needed, and the
towers work on their own.

Tolerance: each tensor within 1e-5 of the reference's max magnitude."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from align_torch import AlignModel, preset
from tests.helpers.hf_reference import assert_close
from tests.helpers.hf_reference import smooth_images as images  # photo-like: see smooth_images and the parity tests


def texts(batch: int, T: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids padded to different lengths, [CLS]/[SEP] in place, a second segment (token type 1)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(104, vocab, (batch, T), generator=g)
    mask = torch.zeros(batch, T, dtype=torch.long)
    types = torch.zeros(batch, T, dtype=torch.long)
    for i in range(batch):
        n = T - 5 * i
        ids[i, 0], ids[i, n - 1], ids[i, n:] = 101, 102, 0
        mask[i, :n] = 1
        types[i, n // 2 : n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def compare_with_transformers(ours: AlignModel, ref, pixels: torch.Tensor, text: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        inter = ours.forward_intermediates(pixel_values=pixels, **text)
        ref_vision = ref.vision_model(pixel_values=pixels, output_hidden_states=True)
        ref_text = ref.text_model(**text, output_hidden_states=True, output_attentions=True)
        # transformers' AlignModel embeddings, from the tower outputs above rather than a third forward
        ref_image_embeds = F.normalize(ref_vision.pooler_output, dim=-1)
        ref_text_embeds = F.normalize(ref.text_projection(ref_text.last_hidden_state[:, 0]), dim=-1)
    n_blocks, n_layers = len(ours.vision_model.blocks), len(ours.text_model.layers)
    assert len(inter.image_hidden_states) == len(ref_vision.hidden_states) == n_blocks + 1
    for i, (a, b) in enumerate(zip(inter.image_hidden_states, ref_vision.hidden_states, strict=True)):
        assert_close(a, b, f"image hidden state {i}")
    assert len(inter.image_stage_outputs) == len(ours.config.vision.stages)
    for s, end in enumerate(ours.vision_model.stage_ends):
        assert_close(inter.image_stage_outputs[s], ref_vision.hidden_states[end + 1], f"stage {s} output")
    assert len(inter.text_hidden_states) == len(ref_text.hidden_states) == n_layers + 1
    for i, (a, b) in enumerate(zip(inter.text_hidden_states, ref_text.hidden_states, strict=True)):
        assert_close(a, b, f"text hidden state {i}")
    assert len(inter.text_attentions) == len(ref_text.attentions) == n_layers
    for i, (a, b) in enumerate(zip(inter.text_attentions, ref_text.attentions, strict=True)):
        assert_close(a, b, f"attention probabilities of layer {i}")
        assert torch.allclose(a.sum(-1), torch.ones(()), atol=1e-5), "rows of probabilities sum to 1"
    assert_close(inter.image_embeds, ref_image_embeds, "image_embeds")
    assert_close(inter.text_embeds, ref_text_embeds, "text_embeds")


def test_tiny_intermediates_equal_transformers(tiny_hf):
    folder, ref = tiny_hf
    ours = AlignModel.from_pretrained(folder)
    compare_with_transformers(ours, ref, images(2, 64), texts(2, 12, ours.config.text.vocab_size))


@pytest.mark.slow
def test_full_size_intermediates_equal_transformers(hf_full, native_full):
    """align-base size, batch 2 at 289 px, texts padded to different lengths with a second segment."""
    compare_with_transformers(native_full, hf_full, images(2, 289), texts(2, 16, 30522))


@pytest.mark.slow
def test_full_size_eager_and_sdpa_attention_agree(native_full):
    text = texts(2, 16, 30522, seed=1)
    with torch.no_grad():
        sdpa = native_full.text_model(**text, output_hidden_states=True)
        eager = native_full.text_model(**text, output_hidden_states=True, output_attentions=True)
    for i, (a, b) in enumerate(zip(sdpa.hidden_states, eager.hidden_states, strict=True)):
        # Padded positions attend like real ones in both paths, so compare every position.
        assert_close(a, b, f"SDPA vs eager hidden state {i}")


@pytest.fixture(scope="module")
def tiny() -> AlignModel:
    torch.manual_seed(0)
    return AlignModel(preset("align-tiny")).eval()


def count_calls(modules) -> list[int]:
    calls = [0]
    for m in modules:
        m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_tiny_eager_and_sdpa_attention_agree(tiny):
    text = texts(3, 12, 1000)
    with torch.no_grad():
        sdpa = tiny.text_model(**text).last_hidden_state
        eager = tiny.text_model(**text, output_attentions=True).last_hidden_state
    assert_close(sdpa, eager, "SDPA vs eager last hidden state")


def test_embeddings_equal_forward(tiny):
    pixels, text = images(2, 64), texts(2, 12, 1000)
    with torch.no_grad():
        inter = tiny.forward_intermediates(pixels, **text)
        out = tiny(pixel_values=pixels, **text)
    assert_close(inter.image_embeds, out.image_embeds, "image_embeds")
    assert_close(inter.text_embeds, out.text_embeds, "text_embeds")


def test_stopping_at_an_early_stage_runs_only_that_stage():
    torch.manual_seed(0)
    model = AlignModel(preset("align-tiny")).eval()
    block_calls = count_calls(model.vision_model.blocks)
    layer_calls = count_calls(model.text_model.layers)
    with torch.no_grad():
        full = model.forward_intermediates(images(1, 64), **texts(1, 8, 1000))
    assert block_calls[0] == len(model.vision_model.blocks) and layer_calls[0] == len(model.text_model.layers)

    block_calls[0] = layer_calls[0] = 0
    with torch.no_grad():
        early = model.forward_intermediates(
            images(1, 64), **texts(1, 8, 1000), image_stages=[1], text_indices=[1], stop_early=True
        )
    end = model.vision_model.stage_ends[1]
    assert block_calls[0] == end + 1, "only the blocks up to the end of stage 1 run"
    assert layer_calls[0] == 1, "only the first text layer runs"
    assert early.image_embeds is None and early.text_embeds is None
    assert torch.equal(early.image_stage_outputs[0], full.image_stage_outputs[1])
    assert torch.equal(early.text_hidden_states[0], full.text_hidden_states[1])


def test_stop_early_returns_only_what_was_asked():
    """image_stages=[2], stop_early=True: one stage output and one hidden state, no None padding; the
    positions they hold are given beside them."""
    torch.manual_seed(0)
    model = AlignModel(preset("align-tiny")).eval()
    with torch.no_grad():
        full = model.forward_intermediates(images(1, 64), **texts(1, 8, 1000))
        early = model.forward_intermediates(
            images(1, 64), **texts(1, 8, 1000), image_stages=[2], text_indices=[0, 2], stop_early=True
        )
    end = model.vision_model.stage_ends[2]
    assert early.image_stages == [2] and len(early.image_stage_outputs) == 1
    assert early.image_positions == [end + 1] and len(early.image_hidden_states) == 1
    assert torch.equal(early.image_stage_outputs[0], full.image_stage_outputs[2])
    assert torch.equal(early.image_hidden_states[0], full.image_hidden_states[end + 1])
    assert early.text_positions == [0, 2] and len(early.text_hidden_states) == 2
    assert all(
        torch.equal(a, full.text_hidden_states[p]) for a, p in zip(early.text_hidden_states, [0, 2], strict=True)
    )
    assert len(early.text_attentions) == 1 and torch.equal(early.text_attentions[0], full.text_attentions[1])
    for kept in (early.image_hidden_states, early.image_stage_outputs, early.text_hidden_states, early.text_attentions):
        assert all(t is not None for t in kept)
    n = len(model.vision_model.blocks) + 1
    assert full.image_positions == list(range(n)) and full.image_stages == list(range(len(model.config.vision.stages)))


def test_selection_without_stopping_keeps_embeddings(tiny):
    with torch.no_grad():
        inter = tiny.forward_intermediates(images(1, 64), image_indices=[0, -1])
    assert inter.image_positions == [0, len(tiny.vision_model.blocks)] and len(inter.image_hidden_states) == 2
    assert inter.image_stages == [len(tiny.config.vision.stages) - 1]  # the last block ends the last stage
    assert inter.image_embeds is not None
    assert inter.text_hidden_states is None and inter.text_attentions is None and inter.text_embeds is None


def test_one_modality_alone(tiny):
    with torch.no_grad():
        inter = tiny.forward_intermediates(**texts(2, 10, 1000), output_attentions=False)
    assert inter.image_hidden_states is None and inter.image_stage_outputs is None and inter.image_embeds is None
    assert len(inter.text_hidden_states) == tiny.config.text.num_layers + 1
    assert inter.text_attentions is None
    assert inter.text_embeds.shape == (2, tiny.config.projection_dim)


def test_towers_alone_forward_features(tiny):
    pixels, text = images(2, 64), texts(2, 10, 1000)
    with torch.no_grad():
        inter = tiny.forward_intermediates(pixels, **text)
        fmap = tiny.vision_model.forward_features(pixels)
        hidden = tiny.text_model.forward_features(**text)
    assert fmap.shape == (2, tiny.vision_model.num_features, 2, 2)
    assert torch.equal(fmap, inter.image_hidden_states[-1])
    assert hidden.shape == (2, 10, tiny.config.text.hidden_size)
    assert_close(hidden, inter.text_hidden_states[-1], "text forward_features")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "pixel_values, input_ids or both"),
        ({"pixel_values": torch.zeros(3, 64, 64)}, "pixel_values must be"),
        ({"pixel_values": torch.zeros(1, 3, 64, 64), "image_indices": [99]}, "image hidden-state index 99"),
        ({"pixel_values": torch.zeros(1, 3, 64, 64), "image_stages": [7]}, "stage index 7"),
        ({"input_ids": torch.ones(1, 4, dtype=torch.long), "text_indices": [-4]}, "text hidden-state index -4"),
    ],
)
def test_bad_requests_say_what_is_wrong(tiny, kwargs, message):
    with pytest.raises((ValueError, IndexError), match=message):
        tiny.forward_intermediates(**kwargs)
