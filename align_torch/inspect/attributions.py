"""Which tokens of a text drive its cosine with an image: per-token scores, with a measured error.

"integrated_gradients" (Sundararajan et al. 2017) on the word embeddings x (the output of
`text_model.embeddings.word_embeddings`, before positions and token types are added): from a baseline x0 in
which every real token except [CLS] and [SEP] is replaced by [PAD]'s embedding,

    score_t = sum_d (x - x0)_td * integral_0^1 d cos / d x_td (x0 + a (x - x0)) da,

the integral by Gauss-Legendre quadrature with `steps` nodes. Completeness says the scores sum to
cos(x) - cos(x0); `completeness_error` is how far they are from it, relative to |cos(x) - cos(x0)|.
"rollout" (Abnar & Zuidema 2020): the [CLS] row of the product over layers of (head-mean attention + identity)
/ 2, rows renormalised; a flow of attention, not a contribution, so it has no completeness error (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model.align import AlignModel
from .hooks import eval_then_restore

METHODS = ("integrated_gradients", "rollout")


@dataclass
class TokenAttributions:
    """Per-token scores for B image-text pairs (padding scores 0)."""

    scores: torch.Tensor  # (B, T) float32
    completeness_error: (
        torch.Tensor
    )  # (B,) |sum(scores) - (cos - baseline_cos)| / |cos - baseline_cos|; NaN for rollout
    cosine: torch.Tensor  # (B,) the image-text cosine explained
    baseline_cosine: torch.Tensor | None  # (B,) the cosine at the [PAD] baseline (integrated gradients)
    method: str


def token_attributions(
    model: AlignModel,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    method: str = "integrated_gradients",
    steps: int = 32,
) -> TokenAttributions:
    """B texts (B, T) and B images (or one image for all texts) -> per-token scores for each pair's cosine.

    The model runs in eval mode; its modes and parameters' gradients are left as they were.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, tokens), got {tuple(input_ids.shape)}")
    if pixel_values.ndim != 4 or pixel_values.shape[0] not in (1, input_ids.shape[0]):
        raise ValueError(
            f"pixel_values must be (1 or {input_ids.shape[0]} images, channels, height, width) for "
            f"{input_ids.shape[0]} texts, got {tuple(pixel_values.shape)}"
        )
    if attention_mask is None:
        attention_mask = (input_ids != model.config.text.pad_token_id).long()  # as encode_text
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    with eval_then_restore(model):
        with torch.no_grad():
            image = model.encode_image(pixel_values, normalize=True).float()  # (1 or B, P)
        if method == "rollout":
            return _rollout(model, image, input_ids, attention_mask, token_type_ids)
        return _integrated_gradients(model, image, input_ids, attention_mask, token_type_ids, steps)


def _text_cosine(
    model: AlignModel,
    image: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
) -> torch.Tensor:
    """(B,) cosine of each text with its image, through the tower's plain forward (hooks see every layer)."""
    hidden = model.text_model(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, D)
    text = model.project_text(model.pool_text(hidden, attention_mask), normalize=True).float()  # (B, P)
    return (text * image).sum(dim=-1)  # (B,)


def _integrated_gradients(
    model: AlignModel,
    image: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    steps: int,
) -> TokenAttributions:
    embedding: nn.Embedding = model.text_model.embeddings.word_embeddings
    B, T = input_ids.shape
    real = attention_mask.bool()  # (B, T)
    last_real = real.long().cumsum(dim=1).argmax(dim=1)  # (B,) position of [SEP]: the last real token
    keep = ~real  # padding stays padding
    keep[:, 0] = True  # [CLS]
    keep[torch.arange(B), last_real] = True  # [SEP]
    baseline_ids = torch.where(keep, input_ids, torch.full_like(input_ids, model.config.text.pad_token_id))
    with torch.no_grad():
        x = embedding(input_ids)  # (B, T, D)
        x0 = embedding(baseline_ids)  # (B, T, D)
    replacement: list[torch.Tensor] = []

    def replace(_m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        if out.shape != replacement[-1].shape:  # a fused model trims padding columns before the embeddings
            raise ValueError(
                f"the text tower embedded {tuple(out.shape[:2])} tokens for {tuple(input_ids.shape)} input_ids: "
                "pass texts padded to their longest, or an unfused model"
            )
        return replacement[-1]

    def cosine_at(e: torch.Tensor) -> torch.Tensor:
        replacement.append(e)
        return _text_cosine(model, image, input_ids, attention_mask, token_type_ids)

    nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]
    alphas, weights = (nodes + 1) / 2, weights / 2  # on [0, 1]; the weights sum to 1
    handle = embedding.register_forward_hook(replace)
    try:
        with torch.no_grad():
            cosine, baseline_cosine = cosine_at(x), cosine_at(x0)  # (B,) each
        avg_grad = torch.zeros_like(x, dtype=torch.float32)  # (B, T, D)
        with torch.enable_grad():
            for a, w in zip(alphas.tolist(), weights.tolist(), strict=True):
                e = (x0 + a * (x - x0)).detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(cosine_at(e).sum(), e)  # texts are independent in eval mode
                avg_grad += w * grad.float()
    finally:
        handle.remove()
    scores = ((x - x0).float() * avg_grad).sum(dim=-1)  # (B, T)
    delta = (cosine - baseline_cosine).double()  # (B,)
    error = (scores.double().sum(dim=1) - delta).abs() / delta.abs().clamp_min(1e-12)
    return TokenAttributions(scores, error.float(), cosine, baseline_cosine, "integrated_gradients")


def _rollout(
    model: AlignModel,
    image: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
) -> TokenAttributions:
    with torch.no_grad():
        out = model.text_model(input_ids, attention_mask, token_type_ids, output_attentions=True)
        text = model.project_text(model.pool_text(out.last_hidden_state, attention_mask), normalize=True)
        cosine = (text.float() * image).sum(dim=-1)  # (B,)
        B, T = input_ids.shape
        eye = torch.eye(T)
        flow = eye.expand(B, T, T)  # (B, T, T)
        for probs in out.attentions:  # (B, heads, T, T) each, first layer first
            a = (probs.float().mean(dim=1) + eye) / 2  # the residual stream carries half
            flow = F.normalize(a, p=1, dim=-1) @ flow  # (B, T, T)
        scores = flow[:, 0] * attention_mask  # (B, T): from [CLS], the token ALIGN pools
    nan = torch.full((B,), float("nan"))
    return TokenAttributions(scores, nan, cosine, None, "rollout")
