"""ALIGN's contrastive loss and SigLIP's sigmoid loss as pure functions, and their cross-rank forms for
training on many GPUs (the rows gathered through util/distributed.py; SigLIP's ring pass written here).

Every loss takes optional caption `groups`: one integer per pair of the (global) batch, equal for pairs whose
captions are identical (`duplicate_groups`). Such pairs are positives of each other: a batch with a caption
repeated four times (class-like captions) otherwise teaches the model to push apart images the caption fits
equally well. Without groups, pair i is the only positive of row/column i.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..util.distributed import gather_rows, is_distributed, row_counts
from .config import LABEL_SMOOTHING

DUPLICATE_CAPTIONS = ("positive", "negative")


def _check_square(what: str, logits: torch.Tensor, groups: torch.Tensor | None) -> None:
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"{what} needs a square (texts, images) logit matrix, got {tuple(logits.shape)}")
    if groups is not None and tuple(groups.shape) != (logits.shape[0],):
        raise ValueError(f"{what}: groups must hold one id per pair ({logits.shape[0]}), got {tuple(groups.shape)}")


def positives(row_groups: torch.Tensor, column_groups: torch.Tensor) -> torch.Tensor:
    """(b,) and (n,) caption groups -> (b, n) bool: True where row i and column j share a caption."""
    return row_groups[:, None] == column_groups[None, :]


def _targets(row_groups: torch.Tensor, column_groups: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(b, n) target distributions of the cross-entropy: uniform over each row's positives."""
    mask = positives(row_groups, column_groups).to(dtype)
    return mask / mask.sum(dim=1, keepdim=True)


def contrastive_loss(
    logits_per_text: torch.Tensor, label_smoothing: float = LABEL_SMOOTHING, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of the text->image and image->text cross-entropies; pair i is the positive of row/column i, and with
    `groups` (B,) every pair of its caption group (the target is then uniform over the group).

    logits_per_text: (B_text, B_image) with the positives on the diagonal. Kakao Brain's original sums the
    two directions; transformers (and we) average them, which only halves the gradient scale.
    """
    _check_square("contrastive loss", logits_per_text, groups)
    if groups is None:
        target = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    else:
        target = _targets(groups, groups, logits_per_text.dtype)  # (B, B), symmetric: serves both directions
    text_loss = F.cross_entropy(logits_per_text, target, label_smoothing=label_smoothing)
    image_loss = F.cross_entropy(logits_per_text.t(), target, label_smoothing=label_smoothing)
    return (text_loss + image_loss) / 2


def sigmoid_loss(logits_per_text: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP's loss (Zhai et al. 2023): every (text, image) pair is its own binary decision, the positives on
    the diagonal; -sum_ij log sigmoid(z_ij * logit_ij) / batch with z = +1 on the diagonal, -1 elsewhere.
    With `groups` (B,), z = +1 wherever text i and image j share a caption group.

    logits_per_text: (B, B) = cosine / temperature + bias.
    """
    _check_square("sigmoid loss", logits_per_text, groups)
    n = logits_per_text.shape[0]
    if groups is None:
        groups = torch.arange(n, device=logits_per_text.device)
    signs = 2 * positives(groups, groups).to(logits_per_text.dtype) - 1  # (B, B): +1 / -1
    return -F.logsigmoid(signs * logits_per_text).sum() / n


def duplicate_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(b, T) token ids and mask of this rank's captions -> (N,) caption group of every pair of the global batch
    (all ranks' rows, in rank order): equal exactly where the tokenised captions are equal. Every rank gets the
    same ids (a collective under DDP; no gradient)."""
    tokens = input_ids.long().masked_fill(attention_mask == 0, -1)  # (b, T): padding never matches a token
    if is_distributed():
        longest = torch.tensor([tokens.shape[1]], device=tokens.device)
        dist.all_reduce(longest, op=dist.ReduceOp.MAX)
        tokens = F.pad(tokens, (0, int(longest) - tokens.shape[1]), value=-1)
        tokens = gather_rows(tokens)  # (N, T)
    return torch.unique(tokens, dim=0, return_inverse=True)[1]  # (N,)


def global_contrastive_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    temperature: torch.Tensor,
    label_smoothing: float = LABEL_SMOOTHING,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """ALIGN's loss over the batch of every rank: this rank's texts and images score against all ranks'.

    Takes this rank's L2-normalised (b, P) embeddings and optionally the (N,) caption groups of the global
    batch (`duplicate_groups`). Each rank returns its share of the global loss, scaled by the world size, so
    that DDP's gradient average equals the gradient of one process holding the concatenated batch; the loss
    value averaged over ranks equals that process's loss.
    """
    if text_embeds.shape != image_embeds.shape or text_embeds.ndim != 2:
        raise ValueError(
            f"text and image embeddings must both be (batch, dim), got {tuple(text_embeds.shape)} "
            f"and {tuple(image_embeds.shape)}"
        )
    if not is_distributed():
        return contrastive_loss(text_embeds @ image_embeds.t() / temperature, label_smoothing, groups)
    all_text, all_image = gather_rows(text_embeds, grad=True), gather_rows(image_embeds, grad=True)  # (N, P)
    rows = text_embeds.shape[0]
    offset = sum(row_counts(rows, text_embeds.device)[: dist.get_rank()])  # this rank's first row
    if groups is None:
        target = offset + torch.arange(rows, device=text_embeds.device)
    else:  # (b, N), the same for both directions: text i and image i share pair i's group
        target = _targets(groups[offset : offset + rows], groups, text_embeds.dtype)
    text_logits = text_embeds @ all_image.t() / temperature  # (b, N): local texts vs all images
    image_logits = image_embeds @ all_text.t() / temperature  # (b, N): local images vs all texts
    total = F.cross_entropy(text_logits, target, label_smoothing=label_smoothing, reduction="sum")
    total = total + F.cross_entropy(image_logits, target, label_smoothing=label_smoothing, reduction="sum")
    return total / (2 * all_text.shape[0]) * dist.get_world_size()


EXCHANGES = ("gather", "ring")


def global_sigmoid_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    temperature: torch.Tensor,
    logit_bias: torch.Tensor,
    exchange: str = "gather",
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP's loss over the batch of every rank: this rank's images score against every rank's texts.

    Takes this rank's L2-normalised (b, P) embeddings and optionally the (N,) caption groups of the global
    batch (`duplicate_groups`: pairs of one group are positives of each other). `exchange` says how the other ranks' texts arrive:
    "gather" all-gathers them at once; "ring" is SigLIP's chunked exchange, each rank passing the text chunk
    it holds to the next rank W-1 times (a point-to-point pass whose backward sends the gradient back the other
    way). Both are exact. As global_contrastive_loss, each rank returns its share of the global loss scaled by
    the world size, so DDP's gradient average is the gradient of one process holding the whole batch.
    """
    if text_embeds.shape != image_embeds.shape or text_embeds.ndim != 2:
        raise ValueError(
            f"text and image embeddings must both be (batch, dim), got {tuple(text_embeds.shape)} "
            f"and {tuple(image_embeds.shape)}"
        )
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be {' or '.join(repr(e) for e in EXCHANGES)}, got {exchange!r}")
    if not is_distributed():
        return sigmoid_loss(text_embeds @ image_embeds.t() / temperature + logit_bias, groups)
    world, rank = dist.get_world_size(), dist.get_rank()
    counts = row_counts(text_embeds.shape[0], text_embeds.device)
    if groups is None:
        groups = torch.arange(sum(counts), device=text_embeds.device)  # each pair its own group
    chunks = torch.split(groups, counts)  # every rank's groups, in rank order
    if exchange == "gather":
        all_text = gather_rows(text_embeds, grad=True)  # (N, P)
        total = _pair_terms(image_embeds, all_text, temperature, logit_bias, positives(chunks[rank], groups))
    else:
        total = _RingLoss.apply(image_embeds, text_embeds, temperature, logit_bias, chunks, _ring_group())
    return total / sum(counts) * world


def _pair_terms(
    image: torch.Tensor,
    text: torch.Tensor,
    temperature: torch.Tensor,
    logit_bias: torch.Tensor,
    positive: torch.Tensor,
) -> torch.Tensor:
    """sum_ij -log sigmoid(z_ij * logit_ij) for images (b, P) against texts (n, P); z = +1 where `positive`
    (b, n) says text j is a caption of image i, -1 elsewhere."""
    logits = image @ text.t() / temperature + logit_bias  # (b, n)
    signs = 2 * positive.to(logits.dtype) - 1  # (b, n): +1 / -1
    return -F.logsigmoid(signs * logits).sum()


_RING: dict[str, object] = {}


def _ring_group() -> dist.ProcessGroup:
    """A process group of its own for the ring's point-to-point passes, so they never interleave with DDP's
    gradient all-reduces on the default group. Made (collectively) on first use in each default group."""
    world_group = dist.distributed_c10d._get_default_group()
    if _RING.get("world") is not world_group:
        _RING["world"], _RING["group"] = world_group, dist.new_group()
    return _RING["group"]


def _shift(x: torch.Tensor, rows: int, step: int, group: dist.ProcessGroup) -> torch.Tensor:
    """Send `x` to rank + step and receive `rows` rows from rank - step (ranks on a ring)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    out = x.new_empty((rows, *x.shape[1:]))
    requests = [dist.isend(x.contiguous(), (rank + step) % world, group), dist.irecv(out, (rank - step) % world, group)]
    for request in requests:
        request.wait()
    return out


class _RingLoss(torch.autograd.Function):
    """sum over this rank's images and every rank's texts of the sigmoid terms, by SigLIP's chunked exchange:
    each rank passes the text chunk it holds to the next rank, W - 1 times, scoring its images against each.

    Only one received chunk is held at a time, in the forward and in the backward: the backward passes the
    chunks round the ring again, recomputing each step's terms, and each chunk travels with the gradient its
    visited ranks have added up; one more pass brings every gradient home to the rank whose texts it is for.
    """

    @staticmethod
    def forward(ctx, image, text, temperature, bias, chunks: tuple[torch.Tensor, ...], group) -> torch.Tensor:
        # chunks: every rank's (n_r,) caption groups; rank r - k's texts meet this rank's images at step k.
        ctx.save_for_backward(image, text, temperature, bias)
        ctx.chunks, ctx.group = chunks, group
        world, rank = len(chunks), dist.get_rank()
        total = _pair_terms(image, text, temperature, bias, positives(chunks[rank], chunks[rank]))
        chunk = text
        for k in range(1, world):
            source = chunks[(rank - k) % world]
            chunk = _shift(chunk, len(source), 1, group)  # (n_{r-k}, P): rank r - k's texts
            total = total + _pair_terms(image, chunk, temperature, bias, positives(chunks[rank], source))
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        image, text, temperature, bias = ctx.saved_tensors
        chunks, group = ctx.chunks, ctx.group
        counts = [len(c) for c in chunks]
        world, rank = len(counts), dist.get_rank()
        grads = [torch.zeros_like(image), None, torch.zeros_like(temperature), torch.zeros_like(bias)]
        chunk, chunk_grad = text, torch.zeros_like(text)  # the chunk held and its gradient so far
        for k in range(world):
            if k > 0:
                rows = counts[(rank - k) % world]
                chunk, chunk_grad = _shift(chunk, rows, 1, group), _shift(chunk_grad, rows, 1, group)
            leaves = [t.detach().requires_grad_() for t in (image, chunk, temperature, bias)]
            with torch.enable_grad():
                terms = _pair_terms(*leaves, positives(chunks[rank], chunks[(rank - k) % world]))
                g_image, g_chunk, g_temperature, g_bias = torch.autograd.grad(terms, leaves, grad)
            grads[0] += g_image
            grads[2] += g_temperature
            grads[3] += g_bias
            chunk_grad = chunk_grad + g_chunk
        # The chunk held last is rank r + 1's; one more pass gives each rank its own texts' gradient.
        grads[1] = _shift(chunk_grad, counts[rank], 1, group) if world > 1 else chunk_grad
        return (*grads, None, None)


def global_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    temperature: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    label_smoothing: float = LABEL_SMOOTHING,
    exchange: str = "gather",
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training loss over every rank's batch: ALIGN's softmax contrastive loss, or SigLIP's sigmoid loss
    when the model has a logit bias (a config with loss="sigmoid"; `exchange` applies to it alone). `groups`:
    the (N,) caption groups of the global batch, whose members are positives of each other."""
    if logit_bias is None:
        return global_contrastive_loss(text_embeds, image_embeds, temperature, label_smoothing, groups)
    return global_sigmoid_loss(text_embeds, image_embeds, temperature, logit_bias, exchange, groups)
