"""Linear probe: multinomial logistic regression on frozen features, the CLIP paper's protocol.

The L2 strength is chosen on a held-out part of the train features (a sweep over log-spaced values), then
the probe is refitted on all the train features and scored on the test features. The objective is
mean cross-entropy + l2 / 2 * ||W||^2 (the bias unpenalised), solved by scikit-learn's L-BFGS when it is
installed (C = 1 / (l2 * n)) or by torch.optim.LBFGS in float64 otherwise; the two reach the same optimum.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .ranks import percent

SOLVERS = ("auto", "sklearn", "torch")
DEFAULT_L2_GRID = tuple(10.0**e for e in range(-6, 3))  # 1e-6 ... 1e2


@dataclass
class LinearProbe:
    """A fitted probe: logits = features @ weight.T + bias."""

    weight: torch.Tensor  # (C, D) float64
    bias: torch.Tensor  # (C,) float64
    l2: float

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) class indices."""
        return (features.double() @ self.weight.t() + self.bias).argmax(dim=1)


@dataclass
class LinearProbeResult:
    """Test top-1 (percent) with the L2 strength the validation sweep chose."""

    top1: float
    l2: float
    val_top1: dict[float, float]  # the sweep: l2 -> held-out top-1 (percent)
    num_train: int
    num_val: int
    num_test: int
    solver: str
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # unreadable images, when embedded


def resolve_solver(solver: str) -> str:
    """'auto' -> 'sklearn' when scikit-learn is installed, else 'torch'."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "auto":
        return "sklearn" if importlib.util.find_spec("sklearn") is not None else "torch"
    return solver


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    l2: float,
    solver: str = "auto",
    max_iter: int = 1000,
) -> LinearProbe:
    """Fit one probe on (N, D) features and (N,) labels in 0..num_classes-1."""
    if l2 <= 0:
        raise ValueError(f"l2 must be positive, got {l2}")
    solver = resolve_solver(solver)
    x, y = features.double().cpu(), labels.long().cpu()
    if solver == "sklearn":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=1.0 / (l2 * len(y)), max_iter=max_iter, tol=1e-8)
        clf.fit(x.numpy(), y.numpy())
        # sklearn keeps only the classes it saw; the others get -inf so they are never predicted.
        weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
        bias = torch.full((num_classes,), float("-inf"), dtype=torch.float64)
        seen = torch.from_numpy(clf.classes_).long()
        if len(seen) == 2:  # binary: one row w for class 1; the softmax form is (-w/2, w/2)
            w, b = torch.from_numpy(clf.coef_[0]), float(clf.intercept_[0])
            weight[seen], bias[seen] = torch.stack([-w / 2, w / 2]), torch.tensor([-b / 2, b / 2], dtype=torch.float64)
        else:
            weight[seen], bias[seen] = torch.from_numpy(clf.coef_), torch.from_numpy(clf.intercept_)
        return LinearProbe(weight, bias, l2)
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.t() + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), l2)


def _top1(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor) -> float:
    return percent(probe.predict(features) == labels.cpu())


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    seed: int = 0,
    solver: str = "auto",
) -> LinearProbeResult:
    """Choose l2 on a random `val_fraction` of the train features, refit on all of them, score the test set.
    Equal held-out scores go to the larger l2 (the simpler probe)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if not l2_grid:
        raise ValueError("l2_grid is empty")
    n = len(train_labels)
    num_val = round(n * val_fraction)
    if num_val < 1 or num_val >= n:
        raise ValueError(f"{n} train features are too few to hold out {val_fraction:.0%} for the sweep")
    solver = resolve_solver(solver)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, fit = order[:num_val], order[num_val:]
    sweep = {}
    for l2 in sorted(l2_grid):
        probe = fit_logistic(train_features[fit], train_labels[fit], num_classes, l2, solver)
        sweep[l2] = _top1(probe, train_features[val], train_labels[val])
    best = max(sorted(sweep), key=lambda l2: (sweep[l2], l2))
    probe = fit_logistic(train_features, train_labels, num_classes, best, solver)
    return LinearProbeResult(
        top1=_top1(probe, test_features, test_labels),
        l2=best,
        val_top1=sweep,
        num_train=n - num_val,
        num_val=num_val,
        num_test=len(test_labels),
        solver=solver,
    )
