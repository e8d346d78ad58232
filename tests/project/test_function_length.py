"""No function in the package is longer than 60 lines (decorators excluded, docstring included), read with `ast`:
a reader finds each step of a long job as a named function rather than as a paragraph of a longer one."""

from __future__ import annotations

import ast
from pathlib import Path

import align_torch

PACKAGE = Path(align_torch.__file__).parent
LIMIT = 60


def long_functions(root: Path = PACKAGE, limit: int = LIMIT) -> list[str]:
    """'file:line name (N lines)' for every function or method of more than `limit` lines under `root`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_the_package_is_longer_than_60_lines():
    assert long_functions() == [], "split these into named steps: " + "; ".join(long_functions())


def test_the_reader_counts_methods_nested_functions_and_async(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT - 1))  # with the def line: exactly LIMIT lines
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(
        f"def ok():\n{body}\n\nclass C:\n    def long(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n"
        f"        y = 1\n\nasync def outer():\n    def inner():\n    {body.replace(chr(10), chr(10) + '    ')}\n"
        "        z = 2\n"
    )
    found = long_functions(tmp_path / "pkg")
    assert sorted(f.split(" ")[1] for f in found) == ["inner", "long", "outer"], found
