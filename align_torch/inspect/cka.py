"""Linear centered kernel alignment (Kornblith et al. 2019) between two sets of features of the same n inputs.

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with the linear kernels K = X X^T and L = Y Y^T.
Biased: HSIC = tr(K H L H) / (n - 1)^2, H the centering matrix. Debiased (Nguyen et al. 2021, "Do wide and
deep networks learn the same things?"): the unbiased HSIC estimator of Song et al. 2012, on K~, L~ with
zeroed diagonals,

    HSIC_u = [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n - 1)(n - 2)) - 2 / (n - 2) 1^T K~ L~ 1] / (n (n - 3)),

which removes the bias that makes the biased CKA of unrelated high-dimensional features far from 0.
"""

from __future__ import annotations

import torch

# A site whose features change over the inputs by less than this fraction of their size is constant: what varies
# is float rounding, whose CKA is noise (align-base's [CLS]-pooled text embeddings gave -1.0 against themselves).
CONSTANT_SPREAD = 1e-4


def varies(x: torch.Tensor, tol: float = CONSTANT_SPREAD) -> bool:
    """Whether (n, p) features vary over the n inputs by more than `tol` of their norm (float64)."""
    x = x.detach().double()
    size = x.norm()
    return bool(size > 0 and (x - x.mean(dim=0, keepdim=True)).norm() > tol * size)


def cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = True) -> float:
    """Linear CKA between (n, p) and (n, q) features of the same n inputs (rows), in float64."""
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"features must be (n, dims) matrices, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features must describe the same inputs: {x.shape[0]} rows against {y.shape[0]}")
    n = x.shape[0]
    if n < (4 if debiased else 2):
        raise ValueError(
            f"CKA needs at least {4 if debiased else 2} inputs{' (debiased)' if debiased else ''}, got {n}"
        )
    if not (varies(x) and varies(y)):
        raise ValueError("CKA is undefined for features that do not vary over the inputs (a constant site)")
    x, y = x.detach().double(), y.detach().double()
    k, l_ = x @ x.T, y @ y.T  # (n, n) linear kernels
    hsic = _hsic_unbiased if debiased else _hsic_biased
    xy, xx, yy = hsic(k, l_), hsic(k, k), hsic(l_, l_)
    denominator = (xx * yy).sqrt()
    if not denominator > 0:
        raise ValueError("CKA is undefined for features that do not vary over the inputs (a constant site)")
    return float(xy / denominator)


def _hsic_biased(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    # tr(K H L H) = <HKH, HLH>: center both kernels (rows and columns) and take the Frobenius product
    kc = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
    lc = l_ - l_.mean(dim=0, keepdim=True) - l_.mean(dim=1, keepdim=True) + l_.mean()
    return (kc * lc).sum() / (k.shape[0] - 1) ** 2


def _hsic_unbiased(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    k = k - torch.diag_embed(k.diagonal())  # K~: zero diagonal
    l_ = l_ - torch.diag_embed(l_.diagonal())
    trace = (k * l_).sum()  # tr(K~ L~), both symmetric
    sums = k.sum() * l_.sum() / ((n - 1) * (n - 2))
    cross = 2 * (k.sum(dim=0) @ l_.sum(dim=1)) / (n - 2)  # 1^T K~ L~ 1
    return (trace + sums - cross) / (n * (n - 3))
