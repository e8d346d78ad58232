"""Two-process DDP on CPU (gloo) against one process on the concatenated batch: the same loss and the same
gradients, through the cross-rank gather. BatchNorm is frozen and drop-path/dropout are off here: with batch
statistics each rank normalises its own half (per-replica BN, as the original ALIGN), which is expected to
differ from one process normalising the whole batch."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from align_torch import AlignModel
from align_torch.train.data import Batch
from align_torch.train.trainer import forward_loss
from tests.helpers.ports import free_port
from tests.helpers.ranks import gloo_group
from tests.helpers.tiny_models import calibrated_tiny, grads_of

# Rows per rank: equal halves, and an uneven split (what skipped unreadable images produce).
SPLITS = ((4, 4), (5, 3))


def _model() -> AlignModel:
    return calibrated_tiny(dtype=torch.float32, image_size=64)


def _global_batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 1000, (8, 10), generator=g)
    mask = torch.ones_like(ids)
    return Batch(torch.randn(8, 3, 64, 64, generator=g), ids, mask, torch.zeros_like(ids), failures=[])


def _worker(rank: int, port: int, out: str) -> None:
    with gloo_group(rank, 2, port):
        results = []
        for split in SPLITS:
            model = _model()
            ddp = DistributedDataParallel(model)
            start = sum(split[:rank])
            local = _global_batch().rows(start, start + split[rank])
            loss = forward_loss(ddp, local, model.temperature, label_smoothing=0.1)
            loss.backward()
            value = loss.detach().clone()
            dist.all_reduce(value)
            results.append({"loss": float(value) / 2, "grads": grads_of(model)})
        if rank == 0:
            torch.save(results, out)


def test_two_process_ddp_equals_one_process(tmp_path: Path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    ddp_results = torch.load(out, weights_only=True)

    model = _model()
    loss = forward_loss(model, _global_batch(), model.temperature, label_smoothing=0.1)
    loss.backward()
    single = grads_of(model)
    for split, result in zip(SPLITS, ddp_results, strict=True):
        assert abs(result["loss"] - loss.item()) <= 1e-6, split
        assert result["grads"].keys() == single.keys()
        worst = max((result["grads"][k] - single[k]).abs().max().item() for k in single)
        assert worst <= 1e-6, (split, worst)
        # The gather must carry gradient: the image tower's first conv is reached only through it for the
        # other rank's texts, so a detached gather would change it by far more than 1e-6.
        assert single["vision_model.stem.conv.weight"].abs().max() > 1e-4
