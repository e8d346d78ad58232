"""Every tensor the trainer hands to a collective must be one its process group's backend can carry: NCCL
refuses CPU tensors, gloo CUDA ones. A two-rank group is faked in one process (collectives recorded, values
left as they are) with the backend `setup_distributed` chooses for a CUDA run, and one training step runs."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from align_torch.train import Trainer
from align_torch.train import trainer as trainer_module
from align_torch.util import distributed as distributed_module
from align_torch.util.distributed import backend_devices, setup_distributed
from tests.helpers.train_data import shapes_run


def _cuda_backend() -> str:
    """The backend string setup_distributed passes to init_process_group under torchrun on a GPU."""
    chosen = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORLD_SIZE", "2")
        mp.setenv("LOCAL_RANK", "0")
        mp.setattr(distributed_module, "resolve_device", lambda name: torch.device("cuda", 0))
        mp.setattr(torch.cuda, "set_device", lambda device: None)
        mp.setattr(dist, "is_initialized", lambda: False)
        mp.setattr(dist, "init_process_group", lambda backend=None, **kw: chosen.append(backend))
        mp.setattr(dist, "get_rank", lambda group=None: 0)
        mp.setattr(dist, "get_world_size", lambda group=None: 2)
        setup_distributed("cuda")
    return chosen[0]


class _FakeGroup:
    """Collectives of a two-rank group that check each tensor's device against `backend` and record it."""

    def __init__(self, backend: str) -> None:
        self.carriers = backend_devices(backend)
        self.seen: list[tuple[str, str]] = []

    def _check(self, name: str, *tensors: torch.Tensor) -> None:
        for t in tensors:
            self.seen.append((name, t.device.type))
            if t.device.type not in self.carriers:
                raise RuntimeError(f"{name}: no backend in {self.carriers} carries a {t.device.type} tensor")

    def all_reduce(self, t, op=None, group=None, async_op=False):
        self._check("all_reduce", t)

    def all_gather(self, outputs, t, group=None, async_op=False):
        self._check("all_gather", t, *outputs)
        for out in outputs:
            out.copy_(t)

    def all_gather_object(self, outputs, obj, group=None):
        self._check("all_gather_object", torch.empty(0))  # objects travel as CPU byte tensors
        outputs[:] = [copy.deepcopy(obj) for _ in outputs]  # each rank's own object, as a real gather gives

    def barrier(self, group=None, async_op=False, device_ids=None):
        self._check("barrier", torch.empty(0))


class _NoDDP(torch.nn.Module):
    """Stands in for DistributedDataParallel, which needs a real group."""

    def __init__(self, module, device_ids=None):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def no_sync(self):
        return contextlib.nullcontext()


def test_backend_carries_every_tensor_the_trainer_reduces(tiny_native_dir: Path, tmp_path: Path, monkeypatch):
    backend = _cuda_backend()
    assert "cuda" in backend_devices(backend)  # the training tensors still go through NCCL
    fake = _FakeGroup(backend)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    for name in ("all_reduce", "all_gather", "all_gather_object", "barrier"):
        monkeypatch.setattr(dist, name, getattr(fake, name))
    monkeypatch.setattr(trainer_module, "DistributedDataParallel", _NoDDP)
    Trainer(shapes_run(tiny_native_dir, tmp_path, max_steps=1)).fit()
    kinds = {name for name, _ in fake.seen}
    # The batch-size check, loss and pair counts, the NaN check (all_reduce), the loss gather, the RNG states.
    assert {"all_reduce", "all_gather", "all_gather_object"} <= kinds, kinds


def test_backend_devices_parses_both_forms():
    assert backend_devices("cpu:gloo,cuda:nccl") == {"cpu": "gloo", "cuda": "nccl"}
    assert backend_devices("nccl") == {"cuda": "nccl"}
    assert backend_devices("gloo") == {"cpu": "gloo"}
    with pytest.raises(RuntimeError, match="carries a cpu tensor"):
        _FakeGroup("nccl")._check("all_reduce", torch.zeros(1))
