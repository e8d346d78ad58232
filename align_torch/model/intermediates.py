"""Every intermediate tensor of ALIGN in one call: image stem/block/stage outputs, text hidden states and
attention probabilities, and the final embeddings, with options to pick a few and stop early.

Positions follow transformers' `output_hidden_states=True`: image position 0 is the stem output and
position i + 1 block i's output (1 + num_blocks in all); text position 0 is the embeddings' output and
position i + 1 layer i's output (1 + num_layers). Unselected positions hold None, so a position means the
same thing whatever was asked for.
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

    # stem output, then each block's output: 1 + num_blocks tensors (B, C, h, w), None where not selected
    image_hidden_states: list[torch.Tensor | None] | None
    # the last block of each stage (a view of the entries above): one per stage, None where not computed
    image_stage_outputs: list[torch.Tensor | None] | None
    # embeddings output, then each layer's output: 1 + num_layers tensors (B, T, D), None where not selected
    text_hidden_states: list[torch.Tensor | None] | None
    # layer i's softmax probabilities (B, heads, T, T), kept where position i + 1 is selected
    text_attentions: list[torch.Tensor | None] | None
    # L2-normalised (B, projection_dim) embeddings as in AlignOutput; None when the tower stopped early
    image_embeds: torch.Tensor | None
    text_embeds: torch.Tensor | None


def _image_positions(
    model: nn.Module, indices: Sequence[int] | None, stages: Sequence[int] | None
) -> tuple[set[int], list[int]]:
    """(selected hidden-state positions, the position of each stage's output) for the image tower."""
    tower = model.vision_model
    n = len(tower.blocks) + 1
    stage_pos = [end + 1 for end in tower.stage_ends]  # block i's output sits at position i + 1
    if indices is None and stages is None:
        return set(range(n)), stage_pos
    wanted = take_indices(indices or [], n, "image hidden-state")
    wanted |= {stage_pos[s] for s in take_indices(stages or [], len(stage_pos), "stage")}
    return wanted, stage_pos


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
    i + 1 = layer i). None everywhere selects everything. With `stop_early`, nothing after the last selected
    position runs (and that tower's embedding is None). `AlignModel.forward_intermediates` is this function.
    """
    if pixel_values is None and input_ids is None:
        raise ValueError("forward_intermediates needs pixel_values, input_ids or both")
    image_hidden = image_stages_out = image_embeds = None
    if pixel_values is not None:
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_values.shape)}")
        wanted, stage_pos = _image_positions(model, image_indices, image_stages)
        out = model.vision_model.forward_intermediates(pixel_values, indices=sorted(wanted), stop_early=stop_early)
        image_hidden = out.hidden_states
        image_stages_out = [image_hidden[p] for p in stage_pos]
        if out.last_hidden_state is not None:
            image_embeds = model.project_image(model.vision_model.pool(out.last_hidden_state), normalize=True)

    text_hidden = text_attn = text_embeds = None
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
        text_hidden = [h if i in wanted else None for i, h in enumerate(out.hidden_states)]
        text_hidden += [None] * (n - len(text_hidden))
        if output_attentions:
            text_attn = [a if i + 1 in wanted else None for i, a in enumerate(out.attentions)]
            text_attn += [None] * (n - 1 - len(text_attn))
        if last == n - 1:
            text_embeds = model.project_text(model.pool_text(out.last_hidden_state, attention_mask), normalize=True)

    return AlignIntermediates(
        image_hidden_states=image_hidden,
        image_stage_outputs=image_stages_out,
        text_hidden_states=text_hidden,
        text_attentions=text_attn,
        image_embeds=image_embeds,
        text_embeds=text_embeds,
    )
