"""Starting a few gloo ranks in a test: a free local port for the process group's rendezvous, one thread each."""

from __future__ import annotations

import socket

import pytest
import torch


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_thread():
    """One intra-op thread while the test runs (several rank processes share the cores), then as before."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
