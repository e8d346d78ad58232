"""Tests that start a few gloo ranks: one intra-op thread each (the rendezvous port: tests.helpers.ports)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread while the test runs (several rank processes share the cores), then as before."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
