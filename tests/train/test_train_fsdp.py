"""FSDP2 (`--fsdp`) on 2 gloo ranks against DDP: one training step gives the same loss and the same updated
weights (fp32, plain SGD, so the weights carry the gradients), and each rank holds about half of the parameters."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from align_torch.train.fsdp import average_replicated_grads, full_model_state, local_parameter_count, shard_model
from align_torch.train.state import CHECKPOINT_FILE, load_checkpoint
from align_torch.train.trainer import forward_loss
from tests.helpers.ports import free_port
from tests.helpers.ranks import gloo_group
from tests.train.test_train_ddp import _global_batch, _model


def _one_step(rank: int, fsdp: bool) -> tuple[float, dict[str, torch.Tensor], tuple[int, int]]:
    model = _model()
    counts = (0, 0)
    if fsdp:
        scalars = shard_model(model, torch.device("cpu"))
        net = model
        counts = local_parameter_count(model)
    else:
        net = DistributedDataParallel(model)
    # Plain SGD: the update is the gradient itself (Adam's normalisation would hide a gradient off by a factor).
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    start = (0, 5)[rank]
    local = _global_batch().rows(start, start + (5, 3)[rank])
    loss = forward_loss(net, local, model.temperature, label_smoothing=0.1)
    loss.backward()
    if fsdp:
        average_replicated_grads(scalars)
    optimizer.step()
    value = loss.detach().clone()
    dist.all_reduce(value)
    state = full_model_state(model) if fsdp else {k: v.detach().clone() for k, v in model.state_dict().items()}
    return float(value) / 2, state, counts


def _worker(rank: int, port: int, out: str) -> None:
    with gloo_group(rank, 2, port):
        ddp = _one_step(rank, fsdp=False)
        fsdp = _one_step(rank, fsdp=True)
        counts = [None, None]
        dist.all_gather_object(counts, fsdp[2])
        if rank == 0:
            torch.save({"ddp": ddp[:2], "fsdp": fsdp[:2], "counts": counts}, out)


def test_fsdp_step_equals_ddp_step_and_shards_parameters(tmp_path: Path):
    out = tmp_path / "fsdp.pt"
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    results = torch.load(out, weights_only=True)
    (ddp_loss, ddp_state), (fsdp_loss, fsdp_state) = results["ddp"], results["fsdp"]
    assert abs(ddp_loss - fsdp_loss) <= 1e-6
    assert ddp_state.keys() == fsdp_state.keys()
    worst = max((ddp_state[k].float() - fsdp_state[k].float()).abs().max().item() for k in ddp_state)
    moved = max((ddp_state[k].float() - _model().state_dict()[k].float()).abs().max().item() for k in ddp_state)
    (local0, total), (local1, _) = results["counts"]
    print(f"FSDP vs DDP: worst weight difference after one step {worst:.1e} (the step moved weights by {moved:.1e})")
    print(f"parameters held: rank 0 {local0:,}, rank 1 {local1:,} of {total:,}")
    assert moved > 1e-4 and worst <= 1e-5
    # The 0-dim temperature stays whole on both ranks; everything else is split.
    assert local0 + local1 == total + 1 and max(local0, local1) <= 0.55 * total


def _run(model_dir: str, manifest: str, out: str, fsdp: bool, resume: bool = False, stop_at: int | None = None):
    from align_torch.train import TrainConfig, Trainer

    cfg = TrainConfig(
        model=model_dir,
        train=manifest,
        out=out,
        batch_size=4,
        max_steps=2,
        lr=1e-3,
        freeze_bn=True,
        drop_path_rate=0.0,
        fsdp=fsdp,
        save_every=1,
        progress=False,
    )
    stop = [] if stop_at is None else [lambda trainer, record: trainer.request_stop()]
    return Trainer(cfg, resume=resume, callbacks=stop).fit()


def _trainer_worker(rank: int, port: int, model_dir: str, manifest: str, root: str) -> None:
    from align_torch.train.guards import Interrupted

    with gloo_group(rank, 2, port):
        _run(model_dir, manifest, f"{root}/ddp", fsdp=False)
        _run(model_dir, manifest, f"{root}/fsdp", fsdp=True)
        try:
            _run(model_dir, manifest, f"{root}/cut", fsdp=True, stop_at=1)
        except Interrupted:
            pass
        else:  # without the stop the cut run would finish, and the resume below would train zero steps
            raise AssertionError("the stop after step 1 never fired")
        assert load_checkpoint(Path(root) / "cut" / CHECKPOINT_FILE).progress.step == 1
        resumed = _run(model_dir, manifest, f"{root}/cut", fsdp=True, resume=True)
        # The resume must train the one step left, not find the run already finished.
        assert len(resumed.losses) == 1 and resumed.progress.step == 2, (len(resumed.losses), resumed.progress.step)


def test_fsdp_trainer_follows_ddp_and_resumes_exactly(tiny_native_dir: Path, tmp_path: Path):
    """Two optimiser steps of `finetune --fsdp` on 2 gloo ranks end at DDP's weights; a run stopped after the
    first step (checkpoint written whole) and resumed ends at the uninterrupted run's weights."""
    from safetensors.torch import load_file

    from tests.helpers.train_data import write_shapes_manifest

    manifest = write_shapes_manifest(tmp_path / "data", 16)
    args = (free_port(), str(tiny_native_dir), str(manifest), str(tmp_path))
    mp.spawn(_trainer_worker, args=args, nprocs=2, join=True)
    ddp, fsdp, cut = (load_file(tmp_path / name / "final" / "model.safetensors") for name in ("ddp", "fsdp", "cut"))
    start = load_file(tiny_native_dir / "model.safetensors")
    assert ddp.keys() == fsdp.keys() == cut.keys()
    moved = max((ddp[k].float() - start[k].float()).abs().max().item() for k in ddp)
    worst = max((ddp[k].float() - fsdp[k].float()).abs().max().item() for k in ddp)
    resumed = max((cut[k].float() - fsdp[k].float()).abs().max().item() for k in ddp)
    print(f"trainer: FSDP vs DDP {worst:.1e}, resumed vs uninterrupted {resumed:.1e} (weights moved {moved:.1e})")
    assert moved > 1e-4 and worst <= 1e-5 and resumed <= 1e-6


def _seeded_worker(rank: int, port: int, out: str) -> None:
    from align_torch import AlignModel
    from align_torch.model.config import align_tiny

    with gloo_group(rank, 2, port):
        torch.manual_seed(rank)  # as the trainer seeds each rank: a random init differs between ranks
        model = AlignModel(align_tiny())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        shard_model(model, torch.device("cpu"))
        state = full_model_state(model)
        if rank == 0:
            torch.save({"before": before, "after": state}, out)


def test_sharding_starts_every_rank_from_rank_0s_weights(tmp_path: Path):
    """A text projection initialised after seeding differs per rank; the sharded model is rank 0's, as DDP's."""
    out = tmp_path / "seeded.pt"
    mp.spawn(_seeded_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    saved = torch.load(out, weights_only=True)
    assert saved["before"].keys() == saved["after"].keys()
    assert all(torch.equal(saved["before"][k], saved["after"][k]) for k in saved["before"])
