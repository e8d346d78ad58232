"""torchrun's environment is read in one place (util/distributed.py) by fine-tuning, eval and embed."""

from __future__ import annotations

import pytest

from align_torch.util.distributed import TorchrunEnv, torchrun_env


def test_no_torchrun_is_rank_0_of_1():
    env = torchrun_env({})
    assert env == TorchrunEnv(rank=0, world=1, local_rank=0, master_addr=None, master_port=None)
    assert not env.distributed


def test_a_torchrun_process_reads_every_variable():
    env = torchrun_env(
        {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    )
    assert (env.rank, env.world, env.local_rank, env.master_addr, env.master_port) == (5, 8, 1, "node0", 29500)
    assert env.distributed


def test_torchrun_with_master_port_0_is_accepted():
    """`torchrun --master-port 0` (a free port) hands MASTER_PORT=0 to its processes."""
    assert torchrun_env({"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "0"}).master_port == 0


def test_the_process_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (torchrun_env().rank, torchrun_env().world, torchrun_env().local_rank) == (1, 3, 1)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 must be below WORLD_SIZE=2"),
        ({"LOCAL_RANK": "-1"}, "LOCAL_RANK=-1 must be at least 0"),
        ({"MASTER_PORT": "x"}, "MASTER_PORT='x' is not an integer"),
        ({"MASTER_PORT": "-1"}, "MASTER_PORT=-1 must be at least 0"),
    ],
)
def test_a_bad_value_names_the_variable(environ, message):
    with pytest.raises(ValueError, match=message):
        torchrun_env(environ)
