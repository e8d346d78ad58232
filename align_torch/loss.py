"""ALIGN's contrastive loss as pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(logits_per_text: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Mean of the text->image and image->text cross-entropies; pair i is the positive of row/column i.

    logits_per_text: (B_text, B_image) with the positives on the diagonal. Kakao Brain's original sums the
    two directions; transformers (and we) average them, which only halves the gradient scale.
    """
    if logits_per_text.ndim != 2 or logits_per_text.shape[0] != logits_per_text.shape[1]:
        raise ValueError(
            f"contrastive loss needs a square (texts, images) logit matrix, got {tuple(logits_per_text.shape)}"
        )
    target = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    text_loss = F.cross_entropy(logits_per_text, target, label_smoothing=label_smoothing)
    image_loss = F.cross_entropy(logits_per_text.t(), target, label_smoothing=label_smoothing)
    return (text_loss + image_loss) / 2
