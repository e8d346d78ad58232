"""GradCache equals the step it replaces. With frozen BatchNorm and no dropout/drop-path, one micro-batched
step (B=64 in chunks of M=8) gives the loss and every gradient of the plain batch-64 step; with dropout and
drop-path on, it equals a reference that runs the same chunks forward in the same order keeping autograd and
back-propagates the full-batch loss once (so the replayed chunks drew the same masks). Both in one process
and in two gloo processes (global batch 128)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from align_torch import AlignModel
from align_torch.model.config import align_tiny
from align_torch.model.loss import global_contrastive_loss
from align_torch.train.data import Batch
from align_torch.train.gradcache import chunk_bounds, embed_pairs, gradcache_backward
from align_torch.train.modes import prepare_model
from align_torch.train.trainer import forward_loss
from tests.helpers.ports import free_port
from tests.helpers.ranks import gloo_group, one_thread
from tests.helpers.tiny_models import calibrated_tiny, grads_of

B, M = 64, 8
LABEL_SMOOTHING = 0.1


# Small convolutions on a shared 2-core machine run ~50x faster without OpenMP's second thread.
pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def _model(noise: bool) -> AlignModel:
    """Tiny float64 model with calibrated, frozen BatchNorm; dropout and drop-path on or off."""
    model = calibrated_tiny(noise=noise, calibration_rows=32)
    with torch.no_grad():
        model.temperature.fill_(0.2)
    return model


def _batch(rows: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 1000, (rows, 12), generator=g)
    pixels = torch.randn(rows, 3, 32, 32, generator=g, dtype=torch.float64)
    return Batch(pixels, ids, torch.ones_like(ids), torch.zeros_like(ids), [])


def _step(model: AlignModel, batch: Batch, kind: str, wrapped: torch.nn.Module | None = None) -> dict:
    """Loss and gradients of one step: "gradcache", "plain" (whole batch at once) or "chunked" (the same
    chunks forward with autograd, one backward of the full loss)."""
    net = wrapped or model
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)
    if kind == "gradcache":
        loss = gradcache_backward(net, batch, model.temperature, LABEL_SMOOTHING, M)
    elif kind == "plain":
        loss = forward_loss(net, batch, model.temperature, LABEL_SMOOTHING)
        loss.backward()
    else:
        parts = [embed_pairs(net, batch.rows(a, b)) for a, b in chunk_bounds(len(batch), M)]
        text, image = torch.cat([t for t, _ in parts]), torch.cat([i for _, i in parts])
        loss = global_contrastive_loss(text, image, model.temperature, LABEL_SMOOTHING)
        loss.backward()
    return {"loss": float(loss.detach()), "grads": grads_of(model), "rng_after": torch.get_rng_state()}


def _worst_relative(a: dict, b: dict) -> float:
    """Largest ||g_a - g_b|| / ||g_b|| over parameters, and the loss's relative difference. Attention key
    biases have an exactly zero gradient (softmax ignores a shift shared by all keys), so their rounding
    noise (~1e-9) is measured against 1e-4 of the largest gradient norm instead of their own."""
    assert a["grads"].keys() == b["grads"].keys()
    worst = abs(a["loss"] - b["loss"]) / abs(b["loss"])
    floor = 1e-4 * max(float(g.norm()) for g in b["grads"].values())
    for k, g in b["grads"].items():
        worst = max(worst, float((a["grads"][k] - g).norm()) / max(float(g.norm()), floor))
    return worst


def _compare(noise: bool, batch: Batch, wrap=None) -> float:
    reference_kind = "chunked" if noise else "plain"
    model = _model(noise)
    ours = _step(model, batch, "gradcache", wrap(model) if wrap else None)
    model = _model(noise)
    reference = _step(model, batch, reference_kind, wrap(model) if wrap else None)
    return _worst_relative(ours, reference)


@pytest.mark.parametrize("noise", [False, True], ids=["exact", "replayed-randomness"])
def test_gradcache_step_equals_reference_in_one_process(noise: bool):
    batch = _batch(B, seed=3)
    worst = _compare(noise, batch)
    print(f"worst relative difference ({'with' if noise else 'without'} dropout/drop-path): {worst:.1e}")
    assert worst <= 1e-5
    if noise:
        # The masks matter: a reference drawing other masks is far off, so the bar above is not loose.
        model = _model(True)
        ours = _step(model, batch, "gradcache")
        model = _model(True)
        torch.manual_seed(99)
        other = _step(model, batch, "plain")
        assert _worst_relative(ours, other) > 1e-2


def test_gradcache_updates_running_statistics_once_per_chunk():
    """BatchNorm in train mode: the replay must not update the running statistics a second time."""
    batch = _batch(16, seed=5)
    runs = []
    for use_gradcache in (True, False):
        torch.manual_seed(0)
        model = AlignModel(
            dataclasses.replace(align_tiny(), vision=dataclasses.replace(align_tiny().vision, image_size=32))
        )
        model = model.double().train()
        prepare_model(model, bn_momentum=0.1, drop_path_rate=0.0)
        if use_gradcache:
            gradcache_backward(model, batch, model.temperature, LABEL_SMOOTHING, 8)
        else:
            with torch.no_grad():
                for a, b in chunk_bounds(16, 8):
                    embed_pairs(model, batch.rows(a, b))
        runs.append({k: v for k, v in model.state_dict().items() if "running" in k or "num_batches" in k})
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) > 0
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def _worker(rank: int, port: int, out: str) -> None:
    with gloo_group(rank, 2, port):
        batch = _batch(B, seed=10 + rank)  # each rank its own 64 pairs: a global batch of 128
        worst = {noise: _compare(noise, batch, wrap=DistributedDataParallel) for noise in (False, True)}
        if rank == 0:
            torch.save(worst, out)


def test_gradcache_with_gradient_checkpointing_and_a_locked_tower():
    """Checkpointed blocks recompute inside the replay (same masks again); LiT's locked image tower gets no
    gradient and the rest still equals the reference."""
    batch = _batch(16, seed=4)
    results = []
    for kind in ("gradcache", "chunked"):
        model = _model(True)
        prepare_model(model, grad_checkpointing=True, lock_image=True, drop_path_rate=0.5)
        results.append(_step(model, batch, kind))
    assert not any(k.startswith("vision_model") for k in results[0]["grads"])
    assert _worst_relative(*results) <= 1e-5


def test_gradcache_under_bf16_autocast_follows_the_chunked_reference():
    """bf16 autocast: replayed chunks compute what the chunked reference computes (float32 model; measured
    equal to the bit here)."""
    batch = _batch(16, seed=6)
    results = []
    for kind in ("gradcache", "chunked"):
        model = _model(False).float()
        net = model
        model.zero_grad(set_to_none=True)
        data = Batch(batch.pixel_values.float(), batch.input_ids, batch.attention_mask, batch.token_type_ids, [])
        if kind == "gradcache":
            loss = gradcache_backward(net, data, model.temperature, LABEL_SMOOTHING, M, precision="bf16")
        else:
            parts = [embed_pairs(net, data.rows(a, b), "bf16") for a, b in chunk_bounds(len(data), M)]
            text, image = torch.cat([t for t, _ in parts]), torch.cat([i for _, i in parts])
            loss = global_contrastive_loss(text, image, model.temperature, LABEL_SMOOTHING)
            loss.backward()
        results.append({"loss": float(loss.detach()), "grads": grads_of(model)})
    assert _worst_relative(*results) <= 1e-5


def test_gradcache_step_equals_reference_in_two_processes(tmp_path: Path):
    out = tmp_path / "worst.pt"
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    worst = torch.load(out, weights_only=True)
    print(f"worst relative difference on rank 0 (exact, replayed randomness): {worst[False]:.1e}, {worst[True]:.1e}")
    assert worst[False] <= 1e-5 and worst[True] <= 1e-5, worst


def test_trainer_with_micro_batches_follows_the_plain_run(tiny_native_dir: Path, tmp_path: Path):
    """Two optimiser steps of the trainer (batch 8, 2 accumulated micro-batches) with --micro-batch-size 3
    take the same losses as without it: BatchNorm frozen, dropout and drop-path off."""
    from align_torch.train import TrainConfig, Trainer
    from tests.helpers.train_data import write_shapes_manifest

    manifest = write_shapes_manifest(tmp_path / "data", 32)
    losses = []
    for micro in (None, 3):
        model = AlignModel.from_pretrained(tiny_native_dir)
        text = dataclasses.replace(model.config.text, hidden_dropout=0.0, attention_dropout=0.0)
        model = AlignModel(model.config.replace(text=text)).eval()
        model.load_state_dict(AlignModel.from_pretrained(tiny_native_dir).state_dict())
        cfg = TrainConfig(
            model=str(tiny_native_dir),
            train=str(manifest),
            out=str(tmp_path / f"run{micro}"),
            batch_size=8,
            grad_accum=2,
            micro_batch_size=micro,
            max_steps=2,
            lr=1e-3,
            freeze_bn=True,
            drop_path_rate=0.0,
            progress=False,
        )
        losses.append(Trainer(cfg, model=model).fit().losses)
    assert len(losses[0]) == 2
    assert all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(losses[1], losses[0], strict=True)), losses
    assert losses[0][1] != losses[0][0]  # the second step saw the first step's update


def test_micro_batched_step_memory_grows_with_the_chunk_not_the_batch(monkeypatch):
    """Peak RSS a step adds, each in a fresh process (bench/gradcache_memory.py): 8x the batch at M=8 adds
    what the embeddings and the (B, B) logits need, not 8x the activations. Measured on the 2-core CPU:
    B = 64, 256, 1024 add 59, 63, 74 MiB micro-batched and 244, 807, 2720 MiB plain."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    from gradcache_memory import run_isolated

    small, large = run_isolated("tiny", 64, 8), run_isolated("tiny", 512, 8)
    print(f"micro-batched step adds {small:.0f} MiB at B=64, {large:.0f} MiB at B=512")
    assert large < 1.5 * small + 16
