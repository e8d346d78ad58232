"""k-nearest-neighbour classification on L2-normalised features, by cosine similarity.

k=1 is Kakao Brain's ImageNet protocol for COYO-ALIGN (the class of the nearest train image). For k > 1 the
neighbours vote with weight exp(cosine / temperature), the weighted vote of Wu et al. 2018 and DINO
(Caron et al. 2021: k=20, temperature 0.07).
"""

from __future__ import annotations

import torch

KNN_TEMPERATURE = 0.07
KNN_KS = (1, 20)  # Kakao Brain's k=1 and DINO's weighted k=20: the ks `eval` reports by default
# Queries per chunk are chosen so one chunk's (queries, gallery) similarity matrix stays near this many floats.
_CHUNK_ELEMENTS = 2**26


@torch.no_grad()
def knn_predict(
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float = KNN_TEMPERATURE,
) -> torch.Tensor:
    """(Q,) predicted class of each query from (N, D) gallery features with (N,) labels and (Q, D) queries,
    all L2-normalised. Ties in the vote go to the lower class index."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if gallery.ndim != 2 or queries.ndim != 2 or gallery.shape[1] != queries.shape[1]:
        raise ValueError(f"gallery {tuple(gallery.shape)} and queries {tuple(queries.shape)} must be (N, D), (Q, D)")
    if gallery_labels.shape != (gallery.shape[0],):
        raise ValueError(f"gallery_labels must be ({gallery.shape[0]},), got {tuple(gallery_labels.shape)}")
    k = min(k, gallery.shape[0])
    chunk = max(1, _CHUNK_ELEMENTS // max(1, gallery.shape[0]))
    out = []
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start : start + chunk] @ gallery.t()  # (q, N)
        top = sims.topk(k, dim=1)  # (q, k), most similar first
        weights = (top.values / temperature).exp()  # (q, k)
        votes = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype, device=weights.device)  # (q, C)
        votes.scatter_add_(1, gallery_labels.to(sims.device)[top.indices], weights)
        out.append(votes.argmax(dim=1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)
