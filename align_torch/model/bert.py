"""BERT text tower (post-LayerNorm, exact GELU). Attention runs through SDPA, or an eager path that also
returns the softmax probabilities when they are asked for."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import TextConfig


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
        # Parameter-free hook sites (align_torch.inspect.hooks): the softmax probabilities (B, H, T, T), eager
        # path only, and the per-head outputs (B, H, T, hd) before the heads are merged and projected.
        self.probs_site = nn.Identity()
        self.heads_site = nn.Identity()

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D); mask (B, 1, 1, T) bool, True where a key may be attended. Returns (out, probs|None)."""
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        v = self.v(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        p_drop = self.dropout.p if self.training else 0.0
        probs = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = self.probs_site(scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype))  # (B, H, T, T)
            y = self.dropout(probs) @ v  # (B, H, T, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)  # (B, H, T, hd)
        y = self.heads_site(y).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.out(y), probs


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
        self, x: torch.Tensor, mask: torch.Tensor | None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, probs = self.attn(x, mask, need_weights)
        x = self.attn_norm(x + self.dropout(a))  # (B, T, D)
        x = self.mlp_norm(x + self.dropout(self.mlp(x)))  # (B, T, D)
        return x, probs


@dataclass
class TextOutput:
    last_hidden_state: torch.Tensor  # (B, T, D)
    hidden_states: list[torch.Tensor] | None = None  # embeddings output, then each layer: num_layers + 1
    attentions: list[torch.Tensor] | None = None  # per layer (B, heads, T, T) softmax probabilities


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
    ) -> TextOutput:
        """input_ids (B, T). `num_layers` runs only the first layers (for early-stopping feature extraction)."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}")
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
                )
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, D)
        hidden = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        layers = self.layers if num_layers is None else self.layers[:num_layers]
        for layer in layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, probs = checkpoint(layer, x, mask, output_attentions, use_reentrant=False)
            else:
                x, probs = layer(x, mask, output_attentions)
            if hidden is not None:
                hidden.append(x)
            if attentions is not None:
                attentions.append(probs)
        return TextOutput(last_hidden_state=x, hidden_states=hidden, attentions=attentions)
