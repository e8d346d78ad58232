"""align_torch's public names are listed once, as the TYPE_CHECKING imports of align_torch/__init__.py (what type
checkers read); the lazy map and `__all__` are read from them. Every listed name imports, as the very object of the
module it is listed from, and the package itself starts without PyTorch."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import align_torch

INIT = Path(align_torch.__file__)


def _listed() -> dict[str, str]:
    """Name -> module, read here independently of the package's own reader."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level == 1, ast.unparse(imp)
                for alias in imp.names:
                    assert alias.name not in names, f"{alias.name} listed twice"
                    names[alias.asname or alias.name] = imp.module
    return names


def test_every_listed_name_imports_as_the_object_of_its_module():
    listed = _listed()
    assert len(listed) >= 30 and "AlignModel" in listed and "embed_images" in listed
    assert align_torch.__all__ == sorted(listed)
    for name, module in listed.items():
        expected = getattr(importlib.import_module(f"align_torch.{module}"), name)
        assert getattr(align_torch, name) is expected, name
    namespace: dict = {}
    exec("from align_torch import *", namespace)
    assert set(listed) <= set(namespace) and set(listed) <= set(dir(align_torch))


def test_an_unlisted_name_is_an_attribute_error_and_import_loads_no_torch():
    try:
        align_torch.NoSuchName  # noqa: B018
    except AttributeError as e:
        assert "NoSuchName" in str(e)
    else:
        raise AssertionError("an unlisted name resolved")
    code = "import sys, align_torch; assert 'torch' not in sys.modules, 'torch'; print(len(align_torch.__all__))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and int(done.stdout) == len(_listed()), done.stderr
