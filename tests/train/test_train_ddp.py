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
from align_torch.model.config import align_tiny
from align_torch.train.data import Batch
from align_torch.train.modes import prepare_model
from align_torch.train.trainer import forward_loss
from tests.helpers.ports import free_port

# Rows per rank: equal halves, and an uneven split (what skipped unreadable images produce).
SPLITS = ((4, 4), (5, 3))


def _model() -> AlignModel:
    torch.manual_seed(0)
    cfg = align_tiny()
    cfg = cfg.replace(text=type(cfg.text)(**{**cfg.text.__dict__, "hidden_dropout": 0.0, "attention_dropout": 0.0}))
    model = AlignModel(cfg).train()
    # Calibrate BN statistics on one batch (momentum 1 keeps exactly its statistics), then freeze them:
    # a fresh model's running statistics (0 and 1) would blow activations and gradients up to ~1e9.
    prepare_model(model, bn_momentum=1.0, drop_path_rate=0.0)
    with torch.no_grad():
        model.encode_image(torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    prepare_model(model, freeze_bn=True, drop_path_rate=0.0)
    return model.train()


def _global_batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 1000, (8, 10), generator=g)
    mask = torch.ones_like(ids)
    return Batch(torch.randn(8, 3, 64, 64, generator=g), ids, mask, torch.zeros_like(ids), failures=[])


def _rows(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(
        batch.pixel_values[start:stop],
        batch.input_ids[start:stop],
        batch.attention_mask[start:stop],
        batch.token_type_ids[start:stop],
        failures=[],
    )


def _grads(model: AlignModel) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = []
        for split in SPLITS:
            model = _model()
            ddp = DistributedDataParallel(model)
            start = sum(split[:rank])
            local = _rows(_global_batch(), start, start + split[rank])
            loss = forward_loss(ddp, local, model.temperature, label_smoothing=0.1)
            loss.backward()
            value = loss.detach().clone()
            dist.all_reduce(value)
            results.append({"loss": float(value) / 2, "grads": _grads(model)})
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_equals_one_process(tmp_path: Path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    ddp_results = torch.load(out, weights_only=True)

    model = _model()
    loss = forward_loss(model, _global_batch(), model.temperature, label_smoothing=0.1)
    loss.backward()
    single = _grads(model)
    for split, result in zip(SPLITS, ddp_results, strict=True):
        assert abs(result["loss"] - loss.item()) <= 1e-6, split
        assert result["grads"].keys() == single.keys()
        worst = max((result["grads"][k] - single[k]).abs().max().item() for k in single)
        assert worst <= 1e-6, (split, worst)
        # The gather must carry gradient: the image tower's first conv is reached only through it for the
        # other rank's texts, so a detached gather would change it by far more than 1e-6.
        assert single["vision_model.stem.conv.weight"].abs().max() > 1e-4
