"""Every intermediate tensor of ALIGN in one call: image stem/block/stage outputs, text hidden states and
attention probabilities, and the final embeddings, with options to pick a few and stop early.

Positions follow transformers' `output_hidden_states=True`: image position 0 is the stem output and
position i + 1 block i's output (1 + num_blocks in all); text position 0 is the embeddings' output and
position i + 1 layer i's output (1 + num_layers). Only what was selected is returned, in position order, with
the positions beside it (`image_positions`, `image_stages`, `text_positions`): nothing is padded with None.
A transformers tower (`--image-tower` / `--text-tower hf:`) gives its own `output_hidden_states`: the
embeddings' output, then each stage (ConvNeXt) or layer (ViT, BERT), each stage of an image tower a stage here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .hf_image import HFImageTower
from .hf_text import HFTextTower
from .indices import take_indices


@dataclass
class AlignIntermediates:
    """What `AlignModel.forward_intermediates` returns. A modality that was not given is None throughout."""

    # the selected image positions' outputs (B, C, h, w): all 1 + num_blocks (stem, then each block) by default
    image_hidden_states: list[torch.Tensor] | None
    # the last block of each selected stage (a view of the entries above): every stage by default
    image_stage_outputs: list[torch.Tensor] | None
    # the selected text positions' outputs (B, T, D): all 1 + num_layers (embeddings, then each layer) by default
    text_hidden_states: list[torch.Tensor] | None
    # softmax probabilities (B, heads, T, T) of the layers at the selected text positions after 0 (layer p - 1)
    text_attentions: list[torch.Tensor] | None
    # L2-normalised (B, projection_dim) embeddings as in AlignOutput; None when the tower stopped early
    image_embeds: torch.Tensor | None
    text_embeds: torch.Tensor | None
    # the position of each entry of image_hidden_states, the stage of each entry of image_stage_outputs and the
    # position of each entry of text_hidden_states
    image_positions: list[int] | None = None
    image_stages: list[int] | None = None
    text_positions: list[int] | None = None


def _image_layout(tower: nn.Module) -> tuple[int, list[int]]:
    """(number of hidden-state positions, position of each stage's output) of an image tower. A transformers
    tower's hidden states after its embeddings are each a stage (ConvNeXt) or a layer (ViT)."""
    if isinstance(tower, HFImageTower):
        return tower.num_positions, list(range(1, tower.num_positions))
    return len(tower.blocks) + 1, [end + 1 for end in tower.stage_ends]  # block i's output sits at position i + 1


def _image_positions(
    model: nn.Module, indices: Sequence[int] | None, stages: Sequence[int] | None
) -> tuple[set[int], list[int], list[int]]:
    """(selected hidden-state positions, selected stages, the position of each stage's output) for the image
    tower. Stages are those asked for, or every stage whose output is a selected position when none are."""
    n, stage_pos = _image_layout(model.vision_model)
    if indices is None and stages is None:
        return set(range(n)), list(range(len(stage_pos))), stage_pos
    wanted = take_indices(indices or [], n, "image hidden-state")
    if stages is None:
        return wanted, [s for s, p in enumerate(stage_pos) if p in wanted], stage_pos
    chosen = take_indices(stages, len(stage_pos), "stage")
    return wanted | {stage_pos[s] for s in chosen}, sorted(chosen), stage_pos


def _image_side(model: nn.Module, pixel_values: torch.Tensor, indices, stages, stop_early: bool) -> dict:
    """The image fields of AlignIntermediates."""
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_values.shape)}")
    wanted, chosen_stages, stage_pos = _image_positions(model, indices, stages)
    positions = sorted(wanted)
    tower = model.vision_model
    if isinstance(tower, HFImageTower):  # runs whole: its hidden states come from one transformers forward
        out = tower.intermediates(pixel_values)
        hidden, pooled = out.hidden_states, out.pooled
        if stop_early and positions and max(positions) < len(hidden) - 1:
            pooled = None
    else:
        out = tower.forward_intermediates(pixel_values, indices=positions, stop_early=stop_early)
        hidden = out.hidden_states
        pooled = None if out.last_hidden_state is None else tower.pool(out.last_hidden_state)
    return dict(
        image_hidden_states=[hidden[p] for p in positions],
        image_stage_outputs=[hidden[stage_pos[s]] for s in chosen_stages],
        image_embeds=None if pooled is None else model.project_image(pooled, normalize=True),
        image_positions=positions,
        image_stages=chosen_stages,
    )


def _text_side(model, input_ids, attention_mask, token_type_ids, indices, output_attentions, stop_early) -> dict:
    """The text fields of AlignIntermediates. A transformers text tower runs whole; its attention probabilities
    are given where its attention implementation returns them (else None)."""
    tower = model.text_model
    hf = isinstance(tower, HFTextTower)
    n = tower.num_positions if hf else len(tower.layers) + 1
    wanted = take_indices(indices, n, "text hidden-state")
    last = max(wanted) if (stop_early and wanted) else n - 1
    extra = {} if hf else {"num_layers": last}
    out = tower(
        input_ids,
        attention_mask,
        token_type_ids,
        output_hidden_states=True,
        output_attentions=output_attentions,
        **extra,
    )
    positions = sorted(wanted)
    attentions = getattr(out, "attentions", None) if output_attentions else None
    if not attentions or any(a is None for a in attentions):  # an attention kernel that keeps no probabilities
        attentions = None
    embeds = None
    if last == n - 1:
        embeds = model.project_text(model.pool_text(out.last_hidden_state, attention_mask), normalize=True)
    return dict(
        text_hidden_states=[out.hidden_states[p] for p in positions],
        text_attentions=None if attentions is None else [attentions[p - 1] for p in positions if p > 0],
        text_embeds=embeds,
        text_positions=positions,
    )


def forward_intermediates(
    model: nn.Module,  # an AlignModel (the function is its method)
    pixel_values: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    *,
    image_indices: Sequence[int] | None = None,
    image_stages: Sequence[int] | None = None,
    text_indices: Sequence[int] | None = None,
    output_attentions: bool = True,
    stop_early: bool = False,
) -> AlignIntermediates:
    """Hidden states of both towers (either alone works), text attention probabilities, embeddings.

    `image_indices` pick image positions (0 = stem, i + 1 = block i; negatives count from the end) and
    `image_stages` add the last block of those stages; `text_indices` pick text positions (0 = embeddings,
    i + 1 = layer i). None everywhere selects everything. Only the selected tensors are returned, with their
    positions. With `stop_early`, nothing after the last selected position runs (and that tower's embedding is
    None). `AlignModel.forward_intermediates` is this function.
    """
    if pixel_values is None and input_ids is None:
        raise ValueError("forward_intermediates needs pixel_values, input_ids or both")
    fields: dict = dict.fromkeys(f.name for f in dataclasses.fields(AlignIntermediates))
    if pixel_values is not None:
        fields |= _image_side(model, pixel_values, image_indices, image_stages, stop_early)
    if input_ids is not None:
        fields |= _text_side(
            model, input_ids, attention_mask, token_type_ids, text_indices, output_attentions, stop_early
        )
    return AlignIntermediates(**fields)
