"""AlignModel's transformers surface against transformers' AlignModel on the same checkpoint: the flags
`output_hidden_states` / `output_attentions` / `return_dict=False`, the tower outputs, `model.vision_model(...)`
and `model.text_model(...)`, `num_parameters()`; and that those outputs come from the recipe's own modules (an
edited layer, a fused model, a `--model-class` subclass)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

from align_torch import AlignModel
from align_torch.inference.fast import fuse_for_inference
from tests.helpers import variants
from tests.helpers.hf_reference import assert_close, smooth_images

TOL = 1e-4  # relative to the reference's largest magnitude


def _texts(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three right-padded texts of different lengths (the longest shorter than the batch: trailing padding
    everywhere), a second segment in one."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(200, vocab, (3, 12), generator=g)
    mask = torch.zeros(3, 12, dtype=torch.long)
    types = torch.zeros(3, 12, dtype=torch.long)
    for i, n in enumerate((9, 6, 3)):
        ids[i, 0], ids[i, n - 1], ids[i, n:] = 101, 102, 0
        mask[i, :n] = 1
    types[0, 5:9] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def assert_same_tree(ours, ref, what: str = "output") -> None:
    """Same nesting, same types (tensor / tuple / None), every tensor within TOL."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(ours, torch.Tensor), f"{what}: {type(ours).__name__} instead of a tensor"
        assert_close(ours, ref, what, tol=TOL)
        return
    assert type(ours) is type(ref), f"{what}: {type(ours).__name__} instead of {type(ref).__name__}"
    if isinstance(ref, tuple):
        assert len(ours) == len(ref), f"{what}: {len(ours)} entries instead of {len(ref)}"
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            assert_same_tree(a, b, f"{what}[{i}]")


def compare_flagged(ours: AlignModel, ref, pixels: torch.Tensor, text: dict) -> None:
    """Every field of both tower outputs with both flags on, and the embeddings and logits."""
    with torch.no_grad():
        got = ours(**text, pixel_values=pixels, output_hidden_states=True, output_attentions=True)
        want = ref(**text, pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    for name in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        assert_close(getattr(got, name), getattr(want, name), name, tol=TOL)
    for tower, fields in (
        ("text_model_output", ("last_hidden_state", "pooler_output", "hidden_states", "attentions")),
        ("vision_model_output", ("last_hidden_state", "pooler_output", "hidden_states")),
    ):
        for name in fields:
            assert_same_tree(getattr(getattr(got, tower), name), getattr(getattr(want, tower), name), f"{tower}.{name}")


@pytest.fixture(scope="module")
def pair(tiny_hf):
    folder, ref = tiny_hf
    return AlignModel.from_pretrained(folder), ref


@pytest.fixture(scope="module")
def inputs(pair):
    ours, _ = pair
    return smooth_images(3, ours.config.vision.image_size), _texts(ours.config.text.vocab_size)


def test_hidden_states_and_attentions_match_transformers(pair, inputs):
    ours, ref = pair
    pixels, text = inputs
    compare_flagged(ours, ref, pixels, text)
    with torch.no_grad():
        got = ours(**text, pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    text_out, vision_out = got.text_model_output, got.vision_model_output
    assert len(text_out.hidden_states) == 1 + ours.config.text.num_layers == len(text_out.attentions) + 1
    assert len(vision_out.hidden_states) == 1 + len(ours.vision_model.blocks)
    assert text_out.hidden_states[0].shape[1] == text["input_ids"].shape[1]  # padded length, as given


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"output_hidden_states": True},
        {"output_attentions": True},
        {"output_hidden_states": True, "return_loss": True},
    ],
)
def test_return_dict_false_is_transformers_tuple(pair, inputs, flags):
    ours, ref = pair
    pixels, text = inputs
    with torch.no_grad():
        got = ours(**text, pixel_values=pixels, return_dict=False, **flags)
        want = ref(**text, pixel_values=pixels, return_dict=False, **flags)
    assert_same_tree(got, want)


def test_default_forward_keeps_only_the_embeddings(pair, inputs):
    ours, _ = pair
    pixels, text = inputs
    with torch.no_grad():
        plain = ours(**text, pixel_values=pixels)
        flagged = ours(**text, pixel_values=pixels, output_hidden_states=True)
    assert plain.text_model_output is None and plain.vision_model_output is None
    assert torch.equal(plain.logits_per_image, flagged.logits_per_image)


def test_tower_calls_return_transformers_outputs(pair, inputs):
    ours, ref = pair
    pixels, text = inputs
    with torch.no_grad():
        got = ours.vision_model(pixels, output_hidden_states=True)
        want = ref.vision_model(pixel_values=pixels, output_hidden_states=True)
        plain = ours.vision_model(pixels)
        got_text = ours.text_model(**text, output_hidden_states=True, output_attentions=True)
        want_text = ref.text_model(**text, output_hidden_states=True, output_attentions=True)
    assert_same_tree(got.to_tuple(), want.to_tuple())
    assert plain.hidden_states is None and torch.equal(plain.pooler_output, got.pooler_output)
    for name in ("last_hidden_state", "hidden_states", "attentions"):
        assert_same_tree(getattr(got_text, name), getattr(want_text, name), f"text_model.{name}")
    # The model card's calls still return the embedding tensor.
    with torch.no_grad():
        features = ours.get_image_features(pixel_values=pixels)
    assert isinstance(features, torch.Tensor) and features.shape == (3, ours.config.projection_dim)


def test_num_parameters_matches_transformers(pair):
    ours, ref = pair
    for kwargs in ({}, {"only_trainable": True}, {"exclude_embeddings": True}):
        assert ours.num_parameters(**kwargs) == ref.num_parameters(**kwargs), kwargs
    frozen = copy.deepcopy(ours)
    frozen.vision_model.requires_grad_(False)
    assert frozen.num_parameters(only_trainable=True) == ours.num_parameters() - sum(
        p.numel() for p in ours.vision_model.parameters()
    )


def test_an_edited_bert_layer_changes_the_hidden_states_after_it(pair, inputs):
    ours, _ = pair
    pixels, text = inputs
    edited = copy.deepcopy(ours)
    with torch.no_grad():
        fc2 = edited.text_model.layers[1].mlp.fc2
        fc2.bias.add_(torch.linspace(-1.0, 1.0, len(fc2.bias)))  # not a uniform shift: LayerNorm would undo it
        before = ours(**text, pixel_values=pixels, output_hidden_states=True).text_model_output
        after = edited(**text, pixel_values=pixels, output_hidden_states=True).text_model_output
    assert torch.equal(before.hidden_states[1], after.hidden_states[1])  # embeddings and layer 0: untouched
    assert (before.hidden_states[2] - after.hidden_states[2]).abs().max() > 1e-3  # layer 1's output moved
    assert torch.equal(after.hidden_states[-1], after.last_hidden_state)


def test_fused_model_gives_the_unfused_hidden_states(pair, inputs):
    """Packing and trimming stay invisible: full-length hidden states, equal to the unfused model's."""
    ours, _ = pair
    pixels, text = inputs
    fused = fuse_for_inference(copy.deepcopy(ours))
    assert fused.pack_text
    with torch.no_grad():
        want = ours(**text, pixel_values=pixels, output_hidden_states=True, output_attentions=True)
        got = fused(**text, pixel_values=pixels, output_hidden_states=True, output_attentions=True)
        tuple_got = fused(**text, pixel_values=pixels, return_dict=False)
    assert_same_tree(got.to_tuple(), want.to_tuple())
    assert tuple_got[4][0].shape == want.text_model_output.last_hidden_state.shape  # return_dict=False unpacked too


def test_model_class_overrides_reach_the_outputs(pair, inputs, tiny_hf_dir):
    """A subclass's layers and blocks are what the hidden states show; its encode_text override still decides
    the embeddings when the flags are on."""
    ours, _ = pair
    pixels, text = inputs
    with torch.no_grad():
        pre_ln = variants.PreLN.from_pretrained(tiny_hf_dir)
        out = pre_ln(**text, pixel_values=pixels, output_hidden_states=True).text_model_output
        base = ours(**text, pixel_values=pixels, output_hidden_states=True).text_model_output
        custom = variants.CustomBlock.from_pretrained(tiny_hf_dir)
        vision = custom(**text, pixel_values=pixels, output_hidden_states=True).vision_model_output
        block1 = custom.vision_model.blocks[1](vision.hidden_states[1])
        flipped = variants.FlippedText.from_pretrained(tiny_hf_dir)
        flagged = flipped(**text, pixel_values=pixels, output_hidden_states=True)
        plain = flipped(**text, pixel_values=pixels)
    assert torch.equal(out.hidden_states[0], base.hidden_states[0])
    assert (out.hidden_states[1] - base.hidden_states[1]).abs().max() > 1e-3
    assert_close(vision.hidden_states[2], block1, "CustomBlock's block 1", tol=TOL)
    assert torch.equal(flagged.text_embeds, plain.text_embeds)
    assert flagged.text_model_output.hidden_states is not None


@pytest.mark.slow
def test_full_size_flags_match_transformers(hf_full, native_full):
    """align-base size, random weights with randomised BatchNorm statistics, temperature 0.0734: every hidden
    state and attention of both towers."""
    g = torch.Generator().manual_seed(3)
    text = _texts(native_full.config.text.vocab_size)
    text["input_ids"] = torch.where(text["attention_mask"].bool(), text["input_ids"], 0)
    assert native_full.temperature.item() != 1.0
    compare_flagged(native_full, hf_full, smooth_images(2, 289, seed=int(torch.randint(9, (1,), generator=g))), text)


def test_the_model_page_block_runs_as_written(model_dir, tmp_path, monkeypatch):
    """docs/model.md's "Code written for transformers' ALIGN" block, on the tiny checkpoint standing where its
    `starter` folder stands."""
    page = Path(__file__).resolve().parents[2] / "docs" / "model.md"
    section = page.read_text(encoding="utf-8").split("## Code written for transformers' ALIGN\n", 1)[1]
    block = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    (tmp_path / "starter").symlink_to(model_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, str(page), "exec"), namespace)
    model = namespace["model"]
    assert len(namespace["text_states"]) == 1 + model.config.text.num_layers
    assert len(namespace["image_states"]) == 1 + len(model.vision_model.blocks)
    assert namespace["tokens"][0] == "[CLS]" and namespace["vision_out"][0].ndim == 4
