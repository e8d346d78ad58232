"""The first-batch check of an ONNX graph against the PyTorch module it was exported from, honest when the model
itself is ill-conditioned.

A well-conditioned tower gives the same outputs in float32 whatever runs it, so the graph must agree with the
PyTorch module to CHECK_MAX_ABS of each row's largest value and cosine CHECK_MIN_COSINE (the plain test). A
random align-base image tower is not: on some real photos PyTorch's own float32 output has cosine 0.58 to the
same module in float64, and fused against unfused eager 0.59. Requiring the graph to match one float32 rounding
of such a row would refuse a graph that is nearer the exact answer than PyTorch. So a row that fails the plain
test is judged against a float64 run of the same module (made only then, and only for the CHECK_FLOAT64_ROWS
failing rows of lowest cosine: it costs a copy of the tower and a slow forward): the graph's error to float64
may be at most FLOAT32_FACTOR times PyTorch float32's own. A wrong graph (a changed weight, a dropped layer) is
refused either way: its error to float64 is far beyond rounding. On align-base's starter model (random weights)
and 34 real photos the graph of the fused image tower fails the plain test and passes this one.

Cosines are computed in float64 without an eps, so rows of pooled values near 1e-12 are judged like any other.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

CHECK_MIN_COSINE = 0.99999
CHECK_MAX_ABS = 1e-4  # relative to the largest value of the row of the PyTorch output
# How much further from float64 the graph may be than PyTorch's own float32 run, on a row failing the plain test:
# two float32 programs of the same sums (other conv algorithms, other summation orders) land at comparable
# distances from the exact answer; a real error lands orders of magnitude further.
FLOAT32_FACTOR = 4.0
CHECK_FLOAT64_ROWS = 2  # at most this many failing rows (the lowest cosines) are run in float64


@dataclass
class GraphAgreement:
    """How the graph's output on the first batch compares with the PyTorch module's."""

    cosine: float  # lowest per-row cosine of the graph to PyTorch float32
    max_rel: float  # largest per-row max |difference| / the row's largest |value|
    graph_error: float | None = None  # per row relative L2 error to float64, graph / PyTorch float32's, the largest
    ok: bool = True

    def describe(self) -> str:
        text = f"lowest cosine {self.cosine:.6f}, max difference {self.max_rel:.2e} of the row's largest value"
        if self.graph_error is not None:
            text += f"; its error to float64 is {self.graph_error:.2f}x PyTorch float32's own on the worst row"
        return text


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, ...) x2 -> (B,) cosine per row in float64, without an eps (two zero rows agree, one does not)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    # Each row divided by its own norm first: the product of two norms near 1e-160 would underflow.
    cos = ((a / na.clamp(min=1e-300)[:, None]) * (b / nb.clamp(min=1e-300)[:, None])).sum(-1)
    return torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)


def _relative_rows(diff: torch.Tensor, ref: torch.Tensor, order: float) -> torch.Tensor:
    """(B, ...) -> (B,) the row norm of `diff` over the row norm of `ref` (0 over 0 is 0)."""
    num = diff.double().flatten(1).norm(p=order, dim=-1)
    den = ref.double().flatten(1).norm(p=order, dim=-1)
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(torch.float64).tiny), (num > 0).double())


def check_graph(got: torch.Tensor, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> GraphAgreement:
    """The graph's output `got` on `inputs` against `module`'s own (float32, then float64 for rows that fail the
    plain test)."""
    with torch.no_grad():
        ref = module(*inputs).float()
    cos = cosine_rows(got, ref)  # (B,)
    rel = _relative_rows(got - ref, ref, float("inf"))  # (B,)
    plain = (cos >= CHECK_MIN_COSINE) & (rel <= CHECK_MAX_ABS)
    agreement = GraphAgreement(cosine=float(cos.min()), max_rel=float(rel.max()))
    if bool(plain.all()):
        return agreement
    # The worst failing rows only run in float64: PyTorch's float64 convolutions are slow (align-base on a 2-core
    # CPU: seconds per image quiet, and a batch of 32 took 20 minutes on a loaded machine); a wrong graph is wrong
    # on every row, and most so where it parts most from float32.
    failing = torch.nonzero(~plain).flatten()
    failing = failing[cos[failing].argsort()[:CHECK_FLOAT64_ROWS]]  # (F,)
    exact = float64_output(module, tuple(x[failing] for x in inputs))  # (F, ...)
    graph = _relative_rows(got[failing].double() - exact, exact, 2)  # (F,)
    own = _relative_rows(ref[failing].double() - exact, exact, 2)  # (F,)
    agreement.graph_error = float((graph / own.clamp(min=torch.finfo(torch.float64).tiny)).max())
    agreement.ok = bool((graph <= FLOAT32_FACTOR * own).all())
    return agreement


def float64_output(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """`module` run in float64 on `inputs` (floating inputs cast, integer ones kept), on a copy of it."""
    exact = copy.deepcopy(module).double()
    with torch.no_grad():
        return exact(*(x.double() if x.is_floating_point() else x for x in inputs)).double()
