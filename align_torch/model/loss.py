"""ALIGN's contrastive loss as pure functions, and the cross-rank feature gather for training on many GPUs."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .config import LABEL_SMOOTHING


def contrastive_loss(logits_per_text: torch.Tensor, label_smoothing: float = LABEL_SMOOTHING) -> torch.Tensor:
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


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each rank the summed gradient of its own rows from every rank's loss.

    Written out rather than torch.distributed.nn.all_gather because that one's backward needs reduce-scatter
    or all-to-all, which gloo (the CPU backend) lacks. Ranks may hold different numbers of rows.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        counts = [int(s) for s in sizes]
        longest = max(counts)
        padded = x.new_zeros((longest, *x.shape[1:]))  # (max_rows, D): all_gather needs equal shapes
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.counts, ctx.rank = counts, rank
        return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)])  # (sum(counts), D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss reads every rank's rows
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]]


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """(b, D) on each rank -> (sum of b over ranks, D) in rank order, differentiable; identity without DDP."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


def is_distributed() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_contrastive_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    temperature: torch.Tensor,
    label_smoothing: float = LABEL_SMOOTHING,
) -> torch.Tensor:
    """ALIGN's loss over the batch of every rank: this rank's texts and images score against all ranks'.

    Takes this rank's L2-normalised (b, P) embeddings. Each rank returns its share of the global loss,
    scaled by the world size, so that DDP's gradient average equals the gradient of one process holding the
    concatenated batch; the loss value averaged over ranks equals that process's loss.
    """
    if text_embeds.shape != image_embeds.shape or text_embeds.ndim != 2:
        raise ValueError(
            f"text and image embeddings must both be (batch, dim), got {tuple(text_embeds.shape)} "
            f"and {tuple(image_embeds.shape)}"
        )
    if not is_distributed():
        return contrastive_loss(text_embeds @ image_embeds.t() / temperature, label_smoothing)
    all_text, all_image = gather_features(text_embeds), gather_features(image_embeds)  # (N, P)
    offset = _row_offset(text_embeds.shape[0], device=text_embeds.device)
    target = offset + torch.arange(text_embeds.shape[0], device=text_embeds.device)
    text_logits = text_embeds @ all_image.t() / temperature  # (b, N): local texts vs all images
    image_logits = image_embeds @ all_text.t() / temperature  # (b, N): local images vs all texts
    total = F.cross_entropy(text_logits, target, label_smoothing=label_smoothing, reduction="sum")
    total = total + F.cross_entropy(image_logits, target, label_smoothing=label_smoothing, reduction="sum")
    return total / (2 * all_text.shape[0]) * dist.get_world_size()


def _row_offset(rows: int, device: torch.device) -> int:
    """Index of this rank's first row in the gathered batch."""
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([rows], device=device))
    return int(sum(int(s) for s in sizes[: dist.get_rank()]))
