"""Every intermediate tensor of ALIGN in one call: image stem/block/stage outputs, text hidden states and
attention probabilities, and the final embeddings, with options to pick a few and stop early.

Positions follow transformers' `output_hidden_states=True`: image position 0 is the stem output and
position i + 1 block i's output (1 + num_blocks in all); text position 0 is the embeddings' output and
position i + 1 layer i's output (1 + num_layers). Only what was selected is returned, in position order, with
the positions beside it (`image_positions`, `image_stages`, `text_positions`): nothing is padded with None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

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


def _image_positions(
    model: nn.Module, indices: Sequence[int] | None, stages: Sequence[int] | None
) -> tuple[set[int], list[int]]:
    """(selected hidden-state positions, selected stages and the position of each stage's output) for the image
    tower. Stages are those asked for, or every stage whose output is a selected position when none are."""
    tower = model.vision_model
    n = len(tower.blocks) + 1
    stage_pos = [end + 1 for end in tower.stage_ends]  # block i's output sits at position i + 1
    if indices is None and stages is None:
        return set(range(n)), list(range(len(stage_pos))), stage_pos
    wanted = take_indices(indices or [], n, "image hidden-state")
    if stages is None:
        return wanted, [s for s, p in enumerate(stage_pos) if p in wanted], stage_pos
    chosen = take_indices(stages, len(stage_pos), "stage")
    return wanted | {stage_pos[s] for s in chosen}, sorted(chosen), stage_pos


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
    image = _image_intermediates(model, pixel_values, image_indices, image_stages, stop_early)
    text = _text_intermediates(
        model, input_ids, attention_mask, token_type_ids, text_indices, output_attentions, stop_early
    )
    return AlignIntermediates(**image, **text)


def _image_intermediates(
    model: nn.Module,
    pixel_values: torch.Tensor | None,
    image_indices: Sequence[int] | None,
    image_stages: Sequence[int] | None,
    stop_early: bool,
) -> dict[str, object]:
    """The image tower's fields of AlignIntermediates (all None without pixel_values)."""
    image_hidden = image_stages_out = image_embeds = image_positions = chosen_stages = None
    if pixel_values is not None:
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_values.shape)}")
        wanted, chosen_stages, stage_pos = _image_positions(model, image_indices, image_stages)
        image_positions = sorted(wanted)
        out = model.vision_model.forward_intermediates(pixel_values, indices=image_positions, stop_early=stop_early)
        image_hidden = [out.hidden_states[p] for p in image_positions]
        image_stages_out = [out.hidden_states[stage_pos[s]] for s in chosen_stages]
        if out.last_hidden_state is not None:
            image_embeds = model.project_image(model.vision_model.pool(out.last_hidden_state), normalize=True)
    return dict(
        image_hidden_states=image_hidden,
        image_stage_outputs=image_stages_out,
        image_embeds=image_embeds,
        image_positions=image_positions,
        image_stages=chosen_stages,
    )


def _text_intermediates(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    text_indices: Sequence[int] | None,
    output_attentions: bool,
    stop_early: bool,
) -> dict[str, object]:
    """The text tower's fields of AlignIntermediates (all None without input_ids)."""
    text_hidden = text_attn = text_embeds = text_positions = None
    if input_ids is not None:
        if model.config.text_tower is not None:
            raise ValueError(
                f"text intermediates read the native BERT's layers; this model's text tower is {model.config.text_tower}"
            )
        n = len(model.text_model.layers) + 1
        wanted = take_indices(text_indices, n, "text hidden-state")
        last = max(wanted) if (stop_early and wanted) else n - 1
        out = model.text_model(
            input_ids,
            attention_mask,
            token_type_ids,
            output_hidden_states=True,
            output_attentions=output_attentions,
            num_layers=last,
        )
        text_positions = sorted(wanted)
        text_hidden = [out.hidden_states[p] for p in text_positions]
        if output_attentions:
            text_attn = [out.attentions[p - 1] for p in text_positions if p > 0]
        if last == n - 1:
            text_embeds = model.project_text(model.pool_text(out.last_hidden_state, attention_mask), normalize=True)
    return dict(
        text_hidden_states=text_hidden,
        text_attentions=text_attn,
        text_embeds=text_embeds,
        text_positions=text_positions,
    )
