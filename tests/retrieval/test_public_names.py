"""The names docs/collections.md gives for retrieval in Python resolve in a fresh interpreter, in any order."""

from __future__ import annotations

import subprocess
import sys

import pytest

ORDERS = [
    "from align_torch.retrieval import Collection, search",
    "from align_torch.retrieval import search, Collection",
    "import align_torch.retrieval as r; Collection, search = r.Collection, r.search",
]


@pytest.mark.parametrize("statement", ORDERS)
def test_collection_and_the_search_function_import_in_a_fresh_process(statement: str):
    # `search` is the one-query function, never a module: docs/collections.md calls
    # align_torch.retrieval.search(path, q).
    code = f"{statement}; import inspect; assert inspect.isfunction(search) and inspect.isclass(Collection)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
