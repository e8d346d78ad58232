"""Each tower of an AlignModel as a module of its own, for export and torch.compile.

`ImageTower(model)(pixel_values)` and `TextTower(model)(input_ids, attention_mask, token_type_ids)` return the
projected embedding (normalised or not) and nothing else, through the recipe's own layers. They skip
`encode_image`/`encode_text`'s argument checks, which read tensor values (the range of the token ids) and so
cannot be traced, and the fused model's eager-only text packing: the text tower is the plain padded path with
the attention mask, whose graph has no shape that depends on the mask's values.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.align import AlignModel

TOWERS = ("image", "text")


class ImageTower(nn.Module):
    """(B, 3, H, W) pixel_values -> (B, projection_dim) image embeddings."""

    def __init__(self, model: AlignModel, normalize: bool = False):
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values).pooler_output  # (B, C)
        return self.model.project_image(pooled, self.normalize)  # (B, P)


class TextTower(nn.Module):
    """(B, T) input_ids, attention_mask and optional token_type_ids -> (B, projection_dim) text embeddings."""

    def __init__(self, model: AlignModel, normalize: bool = False):
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # .forward, not the module call: a fused model's pre-hook on the text tower trims the padding in eager
        # mode by reading the mask's values; here every run keeps the padded length the caller gave.
        h = self.model.text_model.forward(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, D)
        return self.model.project_text(self.model.pool_text(h, attention_mask), self.normalize)  # (B, P)


def tower(model: AlignModel, name: str, normalize: bool = False) -> nn.Module:
    """The `name` ("image" or "text") tower of `model`, in eval mode (it shares the model's weights)."""
    if name == "image":
        return ImageTower(model, normalize).eval()
    if name == "text":
        return TextTower(model, normalize).eval()
    raise ValueError(f"tower must be one of {TOWERS}, got {name!r}")


def uses_token_types(model: AlignModel) -> bool:
    """Whether the text tower has more than one token type (BERT's two segments): then the graph takes them."""
    return model.config.text.type_vocab_size > 1
