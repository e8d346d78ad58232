"""Pairs whose captions tokenise identically are positives of each other (`duplicate_captions="positive"`): the
pure losses against their formulas written out, the caption groups across padding, and a training step of both
losses on 1, 2 and 3 gloo ranks (both sigmoid exchanges, with and without GradCache) giving one loss and one
gradient (float64). Duplicates sit on different ranks and ranks hold uneven numbers of rows, so a group read at
the wrong offset would show."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from align_torch import AlignModel, contrastive_loss, sigmoid_loss
from align_torch.model.loss import duplicate_groups, global_contrastive_loss, global_sigmoid_loss
from align_torch.train.data import Batch
from align_torch.train.gradcache import caption_groups, gradcache_backward
from align_torch.train.trainer import forward_loss
from tests.helpers.ports import free_port
from tests.helpers.ranks import one_thread, run_gloo_rank
from tests.helpers.tiny_models import calibrated_tiny

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

SPLITS = {2: (5, 3), 3: (3, 1, 4)}  # rows per rank; 8 pairs in all
GROUPS = [0, 1, 2, 3, 0, 2, 1, 0]  # the caption group of each of _batch()'s rows
SMOOTHING = 0.1


def _contrastive_formula(logits: torch.Tensor, groups: list[int], eps: float) -> float:
    """Both directions' cross-entropy against targets uniform over the row's group, smoothed by eps."""
    n, total = len(groups), 0.0
    for matrix in (logits, logits.t()):
        for i in range(n):
            size = sum(g == groups[i] for g in groups)
            log_p = torch.log_softmax(matrix[i], dim=0)
            for j in range(n):
                target = (1 - eps) * (groups[i] == groups[j]) / size + eps / n
                total -= target * float(log_p[j])
    return total / (2 * n)


def _sigmoid_formula(logits: torch.Tensor, groups: list[int]) -> float:
    n, total = len(groups), 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if groups[i] == groups[j] else -1.0
            total += math.log1p(math.exp(-z * float(logits[i, j])))
    return total / n


def test_losses_with_groups_equal_their_formulas():
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(8, 16, generator=g, dtype=torch.float64), dim=-1)
    image = F.normalize(torch.randn(8, 16, generator=g, dtype=torch.float64), dim=-1)
    groups = torch.tensor(GROUPS)
    logits = text @ image.t() / 0.25
    expected = _contrastive_formula(logits, GROUPS, SMOOTHING)
    assert abs(float(contrastive_loss(logits, SMOOTHING, groups)) - expected) <= 1e-12
    got = global_contrastive_loss(text, image, torch.tensor(0.25), SMOOTHING, groups)
    assert abs(float(got) - expected) <= 1e-12
    expected = _sigmoid_formula(logits - 2.0, GROUPS)
    assert abs(float(sigmoid_loss(logits - 2.0, groups)) - expected) <= 1e-12
    got = global_sigmoid_loss(text, image, torch.tensor(0.25), torch.tensor(-2.0), groups=groups)
    assert abs(float(got) - expected) <= 1e-12
    # Every pair its own group is the loss without groups; shared groups change it.
    alone = torch.arange(8)
    assert float(contrastive_loss(logits, SMOOTHING, alone)) == pytest.approx(float(contrastive_loss(logits)), 1e-12)
    assert float(sigmoid_loss(logits, alone)) == float(sigmoid_loss(logits))
    assert abs(float(sigmoid_loss(logits, groups)) - float(sigmoid_loss(logits))) > 1e-3
    with pytest.raises(ValueError, match="one id per pair"):
        sigmoid_loss(logits, groups[:5])


def test_groups_compare_the_tokens_the_mask_keeps():
    ids = torch.tensor(
        [[101, 7, 8, 102, 0, 0], [101, 7, 8, 102, 55, 9], [101, 7, 9, 102, 0, 0], [101, 7, 8, 102, 0, 0]]
    )
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    groups = duplicate_groups(ids, mask).tolist()
    # rows 0 and 1 differ only under the padding; row 3 keeps a pad token that row 0 masks
    assert groups[0] == groups[1] and len({groups[0], groups[2], groups[3]}) == 3


def _model(loss: str) -> AlignModel:
    """Tiny float64 model, calibrated frozen BatchNorm, no dropout or drop-path."""
    model = calibrated_tiny(loss)
    with torch.no_grad():
        model.temperature.fill_(0.2)
        if model.logit_bias is not None:
            model.logit_bias.fill_(-1.0)
    return model


def _batch() -> Batch:
    """8 pairs whose captions fall in GROUPS; rows 1 and 6 are equal only under their attention masks."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 1000, (8, 10), generator=g)
    mask = torch.ones_like(ids)
    for row, same in ((4, 0), (7, 0), (5, 2)):
        ids[row] = ids[same]
    mask[1, 6:] = mask[6, 6:] = 0
    ids[6, :6] = ids[1, :6]
    pixels = torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64)
    return Batch(pixels, ids, mask, torch.zeros_like(ids), [])


VARIANTS = [("softmax", "gather", None), ("softmax", "gather", 3)] + [
    ("sigmoid", exchange, micro) for exchange in ("gather", "ring") for micro in (None, 3)
]


def _step(loss: str, exchange: str, micro: int | None, batch: Batch, duplicates: str = "positive") -> dict:
    model = _model(loss)
    net = DistributedDataParallel(model) if dist.is_initialized() else model
    groups = caption_groups(batch, duplicates)
    common = dict(logit_bias=model.logit_bias, exchange=exchange, groups=groups)
    if micro is None:
        value = forward_loss(net, batch, model.temperature, SMOOTHING, **common)
        value.backward()
    else:
        value = gradcache_backward(net, batch, model.temperature, SMOOTHING, micro, **common)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return {"loss": value.detach().clone(), "grads": grads, "groups": None if groups is None else groups.tolist()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    run_gloo_rank(rank, world, port, out, SPLITS, _batch(), _variants)


def _variants(local: Batch):
    for variant in VARIANTS:
        yield "-".join(map(str, variant)), _step(*variant, local)


def _single() -> dict[str, dict]:
    """One process (one rank) holding the whole batch: the reference every world size must give."""
    return {loss: _step(loss, "gather", None, _batch()) for loss in ("softmax", "sigmoid")}


@pytest.mark.parametrize("world", [1, 2, 3])
def test_duplicate_positives_equal_on_any_number_of_ranks(world: int, tmp_path: Path):
    single = _single()
    for result in single.values():
        assert len(set(result["groups"])) == 4 and result["groups"][1] == result["groups"][6], result["groups"]
    # The groups matter to the sigmoid loss. The softmax loss of identical texts (no dropout) is the same either
    # way: their logits tie, so a target spread over them costs what a target on one of them does.
    for loss, differs in (("sigmoid", True), ("softmax", False)):
        negative = _step(loss, "gather", None, _batch(), duplicates="negative")
        assert (abs(float(negative["loss"]) - float(single[loss]["loss"])) > 1e-3) == differs, loss
    if world == 1:
        results = {"-".join(map(str, v)): _step(*v, _batch()) for v in VARIANTS}
        results = {k: {**r, "loss": float(r["loss"])} for k, r in results.items()}
    else:
        out = tmp_path / "results.pt"
        mp.spawn(_worker, args=(world, free_port(), str(out)), nprocs=world, join=True)
        results = torch.load(out, weights_only=True)
    assert set(results) == {"-".join(map(str, v)) for v in VARIANTS}
    for name, result in results.items():
        reference = single[name.split("-")[0]]
        assert result["groups"] == reference["groups"], name
        assert abs(result["loss"] - float(reference["loss"])) <= 1e-9, name
        assert result["grads"].keys() == reference["grads"].keys(), name
        worst = max((result["grads"][k] - g).abs().max().item() for k, g in reference["grads"].items())
        assert worst <= 1e-6, (name, worst)
