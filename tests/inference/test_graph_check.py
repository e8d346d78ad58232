"""The ONNX backend's first-batch check (inference.graph_check): a graph with a real error is refused, on a
well-conditioned tower and on an ill-conditioned one; a graph of an ill-conditioned tower that is as near the
float64 answer as PyTorch's own float32 is accepted; tiny-valued rows are judged like any other."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from align_torch import AlignModel
from align_torch.inference.backend import OnnxTower
from align_torch.inference.graph_check import CHECK_MIN_COSINE, check_graph, cosine_rows

PIXELS = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1


class _Pooled(nn.Module):
    def __init__(self, vision: nn.Module):
        super().__init__()
        self.vision = vision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vision(x).pooler_output


def _ill_conditioned(vision: nn.Module, offset: float = 1e5) -> nn.Module:
    """The same function in exact arithmetic, ill-conditioned in float32: block 0's output carries a large constant
    that block 1's expand BatchNorm subtracts again, so its inputs lose their low digits in float32."""
    vision = copy.deepcopy(vision)
    with torch.no_grad():
        vision.blocks[0].project_bn.bias += offset
        expand = vision.blocks[1].expand_conv.weight[:, :, 0, 0]  # (mid, in)
        vision.blocks[1].expand_bn.running_mean += offset * expand.sum(1)
    return vision


def _wrong(vision: nn.Module, scale: float) -> nn.Module:
    wrong = copy.deepcopy(vision)
    with torch.no_grad():
        wrong.blocks[-1].project_conv.weight.mul_(scale)
    return wrong


def _graph_of(monkeypatch, exported: nn.Module | None):
    """Make OnnxTower export `exported` in place of the module it holds (None: its own)."""
    real = OnnxTower._export

    def export(self, path, inputs):
        held = self.eager
        self.eager = exported if exported is not None else held
        try:
            real(self, path, inputs)
        finally:
            self.eager = held

    monkeypatch.setattr(OnnxTower, "_export", export)


@pytest.fixture(scope="module")
def vision(model_dir) -> nn.Module:
    return AlignModel.from_pretrained(model_dir).eval().vision_model


@pytest.mark.parametrize("ill", [False, True], ids=["well-conditioned", "ill-conditioned"])
def test_a_graph_with_a_real_error_is_refused(vision, ill, monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    tower = _ill_conditioned(vision) if ill else vision
    # Well-conditioned: 1% on one layer's weights; ill-conditioned: beyond its own float32 rounding.
    _graph_of(monkeypatch, _wrong(tower, 1.5 if ill else 1.01))
    with pytest.raises(RuntimeError, match="disagrees with the PyTorch model on the first batch.*float64"):
        OnnxTower(tower, "image", tmp_path)(PIXELS)


def test_an_ill_conditioned_towers_graph_as_near_float64_as_pytorch_is_accepted(vision, monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    tower = _ill_conditioned(vision)
    pooled = OnnxTower(tower, "image", tmp_path)(PIXELS).pooler_output  # (2, C)
    # The plain test alone would refuse it: PyTorch float32 and the graph part beyond 1e-4.
    eager = _Pooled(tower)(PIXELS).detach()
    assert float(cosine_rows(pooled, eager).min()) < CHECK_MIN_COSINE
    agreement = check_graph(pooled, _Pooled(tower), (PIXELS,))
    assert agreement.ok and agreement.graph_error is not None


class _Tiny(nn.Module):
    """A linear map whose outputs are near 1e-12: what F.cosine_similarity's eps would swamp."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8, bias=False)
        with torch.no_grad():
            self.linear.weight.mul_(1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_rows_of_tiny_values_are_judged_by_their_direction():
    module, x = _Tiny().eval(), torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        right = module(x)  # (3, 8), values near 1e-12
    assert check_graph(right * (1 + 1e-7), module, (x,)).ok
    wrong = right.clone()
    wrong[1] = wrong[1].flip(0)
    agreement = check_graph(wrong, module, (x,))
    assert not agreement.ok and agreement.cosine < 0.9
    assert float(cosine_rows(torch.zeros(1, 4), torch.zeros(1, 4))[0]) == 1.0
    assert float(cosine_rows(torch.zeros(1, 4), torch.ones(1, 4))[0]) == 0.0
