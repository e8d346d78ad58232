"""Linear CKA: invariant to rotations and scale (1 within 1e-6), near 0 for independent noise when debiased,
and equal to independent implementations of the formulas (explicit centering matrix; U-centering)."""

from __future__ import annotations

import pytest
import torch

from align_torch import cka


def reference_biased(x: torch.Tensor, y: torch.Tensor) -> float:
    """tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)) with the n x n centering matrix H written out."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    k, l_ = x.double() @ x.double().T, y.double() @ y.double().T

    def hsic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.trace(a @ h @ b @ h)

    return float(hsic(k, l_) / (hsic(k, k) * hsic(l_, l_)).sqrt())


def reference_debiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased HSIC as an inner product of U-centred kernels (Szekely & Rizzo 2014): off the diagonal,
    U_ij = K_ij - r_i / (n - 2) - r_j / (n - 2) + s / ((n - 1)(n - 2)) with K's diagonal zeroed first, r the
    row sums and s the total; U_ii = 0. HSIC_u = <U_K, U_L> / (n (n - 3))."""
    n = x.shape[0]

    def u_centred(f: torch.Tensor) -> torch.Tensor:
        k = f.double() @ f.double().T
        k.fill_diagonal_(0)
        r = k.sum(dim=1)
        u = k - r[:, None] / (n - 2) - r[None, :] / (n - 2) + k.sum() / ((n - 1) * (n - 2))
        return u.fill_diagonal_(0)

    ux, uy = u_centred(x), u_centred(y)
    return float((ux * uy).sum() / ((ux * ux).sum() * (uy * uy).sum()).sqrt())  # n (n - 3) cancels


def features(n: int, p: int, seed: int) -> torch.Tensor:
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("debiased", [True, False])
def test_invariances(debiased):
    x = features(100, 30, 0)
    q, _ = torch.linalg.qr(features(30, 30, 1))  # orthogonal
    assert abs(cka(x, x @ q, debiased) - 1) <= 1e-6
    assert abs(cka(x, 3.7 * x, debiased) - 1) <= 1e-6
    assert abs(cka(x.float(), x.float(), debiased) - 1) <= 1e-6


def test_debiased_cka_of_independent_noise_is_near_zero():
    x, y = features(500, 1000, 2), features(500, 1000, 3)
    assert abs(cka(x, y, debiased=True)) < 0.05
    assert cka(x, y, debiased=False) > 0.5  # the bias the debiased estimator removes: wide features, few inputs


@pytest.mark.parametrize("shape", [(50, 8, 20), (200, 64, 3), (7, 100, 100)])
def test_equals_independent_implementations(shape):
    n, p, q = shape
    x = features(n, p, 4)
    y = x[:, :1].repeat(1, q) * 0.5 + features(n, q, 5)  # related, not identical
    assert cka(x, y, debiased=False) == pytest.approx(reference_biased(x, y), abs=1e-10)
    assert cka(x, y, debiased=True) == pytest.approx(reference_debiased(x, y), abs=1e-10)


def test_bad_inputs():
    with pytest.raises(ValueError, match="same inputs"):
        cka(features(10, 3, 0), features(11, 3, 0))
    with pytest.raises(ValueError, match="at least 4"):
        cka(features(3, 3, 0), features(3, 3, 0))
    with pytest.raises(ValueError, match="constant"):
        cka(torch.ones(10, 3), features(10, 3, 0))
