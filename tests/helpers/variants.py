"""Architecture edits as a researcher writes them, importable for `--model-class _variants:Name` (tests/ is on
sys.path). Each keeps the checkpoint's parameter names, so `Class.from_pretrained` loads it strictly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from align_torch import AlignModel
from align_torch.model.bert import Layer, TextLayout
from align_torch.model.efficientnet import MBConv


def pre_ln_forward(
    self: Layer, x: torch.Tensor, layout: TextLayout, need_weights: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pre-LN with the same weights: x = x + attn(LN(x)); x = x + mlp(LN(x))."""
    a, probs = self.attn(self.attn_norm(x), layout, need_weights)
    x = layout.queries(x) + self.dropout(a)
    x = x + self.dropout(self.mlp(self.mlp_norm(x)))
    return x, probs


def naive_pre_ln_forward(
    self: Layer, x: torch.Tensor, layout: TextLayout, need_weights: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same edit written without `layout.queries`: right on padded text, wrong shape for [CLS]-only."""
    a, probs = self.attn(self.attn_norm(x), layout, need_weights)
    x = x + self.dropout(a)
    x = x + self.dropout(self.mlp(self.mlp_norm(x)))
    return x, probs


_MBCONV_FORWARD = MBConv.forward


def mbconv_plus_forward(self: MBConv, x: torch.Tensor) -> torch.Tensor:
    """The recipe's block, then one more op: a soft clamp of every block output."""
    return 3.0 * torch.tanh(_MBCONV_FORWARD(self, x) / 3.0)


class PreLNLayer(Layer):
    forward = pre_ln_forward


class PreLN(AlignModel):
    """Every text layer pre-LN."""

    def __init__(self, config=None):
        super().__init__(config)
        self.text_model.layers = nn.ModuleList(PreLNLayer(self.config.text) for _ in self.text_model.layers)


class FlippedText(AlignModel):
    """`encode_text` overridden: the text embedding's coordinates in reverse order."""

    def encode_text(self, input_ids, attention_mask=None, token_type_ids=None, normalize=False):
        return super().encode_text(input_ids, attention_mask, token_type_ids, normalize).flip(-1)


class NoSE(nn.Module):
    """An image block of one's own, on an MBConv's modules (same parameter names): no squeeze-excite, and GELU
    where the MBConv has SiLU after the depthwise conv. Fusing would move that SiLU into the conv: unfusable."""

    def __init__(self, block: MBConv):
        super().__init__()
        for name, child in block.named_children():
            setattr(self, name, child)
        self.has_residual = block.has_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x  # (B, in, H, W)
        if getattr(self, "expand_conv", None) is not None:
            x = self.expand_act(self.expand_bn(self.expand_conv(x)))
        x = F.gelu(self.dw_bn(self.dw_conv(self.dw_pad(x))))
        x = self.project_bn(self.project_conv(x))
        return x + shortcut if self.has_residual else x


class CustomBlock(AlignModel):
    """Image block 1 replaced by a NoSE."""

    def __init__(self, config=None):
        super().__init__(config)
        self.vision_model.blocks[1] = NoSE(self.vision_model.blocks[1])
