"""FSDP2 (`--fsdp`) on 2 gloo ranks against DDP: one training step gives the same loss and the same updated
weights (fp32), and each rank holds about half of the parameters."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_train_ddp import _global_batch, _model, _rows
from torch.nn.parallel import DistributedDataParallel

from align_torch.train.fsdp import average_replicated_grads, full_model_state, local_parameter_count, shard_model
from align_torch.train.trainer import forward_loss


def _one_step(rank: int, fsdp: bool) -> tuple[float, dict[str, torch.Tensor], tuple[int, int]]:
    model = _model()
    counts = (0, 0)
    if fsdp:
        scalars = shard_model(model, torch.device("cpu"))
        net = model
        counts = local_parameter_count(model)
    else:
        net = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    start = (0, 5)[rank]
    local = _rows(_global_batch(), start, start + (5, 3)[rank])
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
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ddp = _one_step(rank, fsdp=False)
        fsdp = _one_step(rank, fsdp=True)
        counts = [None, None]
        dist.all_gather_object(counts, fsdp[2])
        if rank == 0:
            torch.save({"ddp": ddp[:2], "fsdp": fsdp[:2], "counts": counts}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp_step_equals_ddp_step_and_shards_parameters(tmp_path: Path):
    out = tmp_path / "fsdp.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
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
