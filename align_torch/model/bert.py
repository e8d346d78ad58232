"""BERT text tower (post-LayerNorm, exact GELU). Attention runs through SDPA, or an eager path that also
returns the softmax probabilities when they are asked for."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import TextConfig
from .outputs import TupleOutput


@torch.no_grad()
def init_linear_and_norms(module: nn.Module, std: float = 0.02) -> None:
    """BERT's scheme for every nn.Linear / nn.Embedding / nn.LayerNorm under `module`."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.normal_(0.0, std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.zero_()
        elif isinstance(m, nn.Embedding) and m.padding_idx is not None:
            m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            m.reset_parameters()


class Embeddings(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        T = input_ids.shape[1]
        if T > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"text of {T} tokens is longer than the model's {self.position_embeddings.num_embeddings} positions"
            )
        x = self.word_embeddings(input_ids)  # (B, T, D)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings.weight[:T]
        return self.dropout(self.norm(x))


def trim_padding(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Cut (B, T) text inputs to the longest real text (B, T'), T' = the last position any mask marks.

    Exact for ALIGN's [CLS] embedding: masked trailing pads are never attended. When every remaining
    position is real the mask is dropped (None), which lets SDPA pick its unmasked kernels. Eager only:
    T' depends on the mask's values.
    """
    if attention_mask is None:
        return input_ids, None, token_type_ids
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    keep = attention_mask.bool()
    # Trailing columns where no text has a real token can go; a column is kept if any row still needs it.
    real = keep.any(dim=0)  # (T,)
    length = int(real.nonzero().max()) + 1 if bool(real.any()) else 1
    input_ids = input_ids[:, :length]  # (B, T')
    if token_type_ids is not None:
        token_type_ids = token_type_ids[:, :length]  # (B, T')
    mask = None if bool(keep[:, :length].all()) else attention_mask[:, :length]
    return input_ids, mask, token_type_ids


@dataclass(frozen=True)
class TextLayout:
    """How the tokens of a batch of texts are laid out; only `Attention` needs to know.

    Padded: x is (B, T, D) and `mask` (B, 1, 1, T) marks the keys that may be attended (None: all).
    Packed (`keep` set): x is (N, D), the N real tokens of all texts one after another, and `keep` (B, T) marks
    where each sits in the padded layout. Every other op of a layer is token-wise, so it runs on either.
    With `cls_only`, attention is asked for each text's first token only: `queries(x)` picks those rows, and
    the layer's output has one row per text ((B, 1, D) padded, (B, D) packed).
    """

    mask: torch.Tensor | None = None  # (B, 1, 1, T) bool
    keep: torch.Tensor | None = None  # (B, T) bool, packed only
    cls_only: bool = False

    @classmethod
    def padded(cls, attention_mask: torch.Tensor | None) -> TextLayout:
        return cls(mask=None if attention_mask is None else attention_mask.bool()[:, None, None, :])

    @classmethod
    def packed(cls, attention_mask: torch.Tensor) -> TextLayout:
        """attention_mask (B, T) of right-padded texts (every text starts with a real token)."""
        keep = attention_mask.bool()
        if not bool(keep[:, 0].all()):
            raise ValueError("every text must start with a real token ([CLS]) to be packed; pad on the right")
        return cls(mask=keep[:, None, None, :], keep=keep)

    def first_tokens_only(self) -> TextLayout:
        """The same layout, asking attention for each text's first ([CLS]) token only."""
        return dataclasses.replace(self, cls_only=True)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> the layout's tokens: (N, D) packed, unchanged padded."""
        return x if self.keep is None else x[self.keep]

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of x whose outputs are wanted: all, or with `cls_only` each text's first token."""
        if not self.cls_only:
            return x
        if self.keep is None:
            return x[:, :1]  # (B, 1, D)
        lengths = self.keep.sum(dim=1)  # (B,)
        return x[lengths.cumsum(0) - lengths]  # (B, D): where each text starts among the packed tokens

    def split_heads(self, t: torch.Tensor, heads: int, queries: bool = False) -> torch.Tensor:
        """Tokens in this layout (or, with `queries`, `queries(x)`'s rows) -> (B, heads, T or 1, D / heads)."""
        if self.keep is not None:
            if queries and self.cls_only:
                t = t[:, None]  # (B, D) -> (B, 1, D)
            else:
                # Back to the padded layout for attention, zeros where the pads were (they are masked out).
                padded = t.new_zeros(*self.keep.shape, t.shape[-1])  # (B, T, D)
                padded[self.keep] = t
                t = padded
        B, T, D = t.shape
        return t.view(B, T, heads, D // heads).transpose(1, 2)  # (B, H, T, hd)

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """(B, heads, Tq, hd) attention outputs for the queries -> rows like `queries(x)`'s."""
        B, H, T, hd = y.shape
        y = y.transpose(1, 2).reshape(B, T, H * hd)  # (B, Tq, D)
        if self.keep is None:
            return y  # (B, T, D), or (B, 1, D) with cls_only
        return y[:, 0] if self.cls_only else y[self.keep]  # (B, D) or (N, D)


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        D = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.head_dim = D // cfg.num_heads
        self.q = nn.Linear(D, D)
        self.k = nn.Linear(D, D)
        self.v = nn.Linear(D, D)
        self.out = nn.Linear(D, D)
        self.dropout = nn.Dropout(cfg.attention_dropout)  # on the attention probabilities
        # Parameter-free hook sites (align_torch.inspect.hooks): the softmax probabilities (B, H, Tq, T), eager
        # path only, and the per-head outputs (B, H, Tq, hd) before the heads are merged and projected.
        self.probs_site = nn.Identity()
        self.heads_site = nn.Identity()

    def forward(
        self, x: torch.Tensor, layout: TextLayout, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) or packed (N, D), see TextLayout. Returns (out for `layout.queries(x)`, probs|None)."""
        q = layout.split_heads(self.q(layout.queries(x)), self.num_heads, queries=True)  # (B, H, Tq, hd)
        k = layout.split_heads(self.k(x), self.num_heads)  # (B, H, T, hd)
        v = layout.split_heads(self.v(x), self.num_heads)  # (B, H, T, hd)
        mask = layout.mask  # (B, 1, 1, T) or None
        p_drop = self.dropout.p if self.training else 0.0
        probs = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, Tq, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = self.probs_site(scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype))  # (B, H, Tq, T)
            y = self.dropout(probs) @ v  # (B, H, Tq, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)  # (B, H, Tq, hd)
        y = self.heads_site(y)  # (B, H, Tq, hd)
        return self.out(layout.merge_heads(y)), probs


class MLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        if cfg.act != "gelu":
            raise ValueError(f"TextConfig.act must be 'gelu' (exact erf GELU, as BERT), got {cfg.act!r}")
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Layer(nn.Module):
    """Post-LN transformer layer: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(
        self, x: torch.Tensor, layout: TextLayout, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) or packed (N, D); the output has the rows of `layout.queries(x)`."""
        a, probs = self.attn(x, layout, need_weights)
        x = self.attn_norm(layout.queries(x) + self.dropout(a))  # (B, T, D)
        x = self.mlp_norm(x + self.dropout(self.mlp(x)))  # (B, T, D)
        return x, probs


@dataclass
class TextOutput(TupleOutput):
    """What the text tower returns; the fields and their order are transformers' (`to_tuple()` as theirs)."""

    last_hidden_state: torch.Tensor  # (B, T, D); (B, 1, D), the [CLS] states, when packed
    # tanh(pooler([CLS])), BERT's pooled output: filled only in AlignModel.forward's text_model_output (ALIGN
    # itself never reads it, so the tower does not compute it)
    pooler_output: torch.Tensor | None = None  # (B, D)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings output, then each layer: num_layers + 1
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer (B, heads, T, T) softmax probabilities


class Bert(nn.Module):
    """The ALIGN text tower. The pooler is kept only so checkpoints round-trip: ALIGN uses the [CLS] state."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)  # unused by ALIGN; see class docstring
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    @torch.no_grad()
    def init_weights(self) -> None:
        """BERT's initialisation: linear and embedding weights normal(0, initializer_range = 0.02), biases 0,
        the padding token's embedding 0, LayerNorm at identity (weight 1, bias 0)."""
        init_linear_and_norms(self, std=0.02)

    def forward_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) token ids -> the (B, T, hidden_size) last hidden states (timm's name for the tower output)."""
        return self(input_ids, attention_mask, token_type_ids).last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        num_layers: int | None = None,
        packed: bool = False,
    ) -> TextOutput:
        """input_ids (B, T). `num_layers` runs only the first layers (for early-stopping feature extraction).

        `packed` (inference, [CLS] only): the padding-free path. Trailing padding is cut, every per-token op
        runs on the real tokens only and the last layer on each text's first token only, so
        `last_hidden_state` is the (B, 1, D) [CLS] states. Texts must be right-padded. The same layers run
        either way; only `Attention` sees the layout (TextLayout).
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        if packed:
            if self.training:
                raise RuntimeError("packed text is for inference; call .eval() first")
            if output_hidden_states or output_attentions or num_layers is not None:
                raise ValueError("packed text gives the [CLS] states only: no hidden states, attentions or num_layers")
            # The mask's values decide the shapes: eager only.
            input_ids, attention_mask, token_type_ids = trim_padding(input_ids, attention_mask, token_type_ids)
        if packed and attention_mask is not None:
            layout = TextLayout.packed(attention_mask)
        else:
            layout = TextLayout.padded(attention_mask)
        x = layout.pack(self.embeddings(input_ids, token_type_ids))  # (B, T, D) or packed (N, D)
        hidden = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        layers = self.layers if num_layers is None else self.layers[:num_layers]
        for i, layer in enumerate(layers):
            if packed and i == len(layers) - 1:
                layout = layout.first_tokens_only()  # nothing past the last layer reads the other tokens
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, probs = checkpoint(layer, x, layout, output_attentions, use_reentrant=False)
            else:
                x, probs = layer(x, layout, output_attentions)
            if hidden is not None:
                hidden.append(x)
            if attentions is not None:
                attentions.append(probs)
        if packed:
            if not len(layers):
                x = layout.first_tokens_only().queries(x)
            x = x.reshape(len(input_ids), 1, x.shape[-1])  # (B, 1, D): [CLS] only
        return TextOutput(
            last_hidden_state=x,
            hidden_states=None if hidden is None else tuple(hidden),
            attentions=None if attentions is None else tuple(attentions),
        )
