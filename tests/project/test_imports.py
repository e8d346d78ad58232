"""The package's import graph, read with `ast` (nothing is imported): no circle between files, and the towers
and the loss import nothing of the package outside model/.

Every import statement counts, wherever it stands: at the top of a file, deferred inside a function, or under
`if TYPE_CHECKING:`; relative imports are resolved against the file's package. `from pkg import name` is an
edge to the module `pkg.name` when that is a file, otherwise to `pkg`'s __init__.py.

Two places import by string through importlib and are not edges here: align_torch/__init__.py's lazy map of
public names (the public entrance: it imports the whole package on demand and nothing imports it back for
code), and cli.py's table of subcommand modules (the dispatcher at the top). align_torch/__init__.py's
`TYPE_CHECKING` imports are that lazy map (it is read from them), so that file contributes no edges at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import align_torch

PACKAGE = Path(align_torch.__file__).parent
NAME = "align_torch"
ENTRANCE = NAME  # align_torch/__init__.py: its lazy map is not an edge (see the module docstring)
# Files of the recipe that must stand alone: they import nothing of the package outside model/, except that the
# loss gathers rows over ranks through the one module of collectives (which itself imports only util/).
SELF_CONTAINED = ("align_torch.model.efficientnet", "align_torch.model.bert", "align_torch.model.loss")
COLLECTIVES = "align_torch.util.distributed"
# The one edge allowed against the folders' order: checkpoint code reads files into the model's config (data),
# while the joint model calls down into checkpoint/ to load itself. Nothing in checkpoint/ imports the model class.
CONFIG = "align_torch.model.config"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Module name -> file, for every .py file of the package."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from X import ...` names, relative dots resolved against `module`'s package."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, module: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules that the file imports anywhere in it (top level, functions, TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, is_package)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            # `import align_torch.x.y` imports the file align_torch/x/y.py; keep the longest name that is a file.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target.startswith(NAME) and target != module:
                found.add(target)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports; the entrance contributes no edges."""
    modules = package_modules(root)
    top = module_name(root / "__init__.py", root)
    return {m: set() if m == top else imports_of(p, m, modules) for m, p in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_import_circle_between_files():
    cycles = find_cycles(import_graph())
    assert cycles == [], "import circles (each group imports itself around): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_towers_and_loss_import_nothing_outside_model():
    graph = import_graph()
    outside = {
        module: sorted(t for t in graph[module] if not t.startswith(f"{NAME}.model") and t != COLLECTIVES)
        for module in SELF_CONTAINED
    }
    assert all(not targets for targets in outside.values()), f"imports out of model/: {outside}"
    assert all(t.startswith(f"{NAME}.util.") for t in graph[COLLECTIVES]), graph[COLLECTIVES]
    # The two towers stand apart: a change to one never reaches the other through an import.
    assert "align_torch.model.bert" not in graph["align_torch.model.efficientnet"]
    assert "align_torch.model.efficientnet" not in graph["align_torch.model.bert"]


def test_model_imports_outside_its_folder_only_what_its_docstring_says():
    """model/__init__.py names the only imports that leave model/: align.py -> checkpoint (hub, weights) and
    loss.py -> util.distributed. A new one must be added there (and here) on purpose."""
    leaving = {
        module: sorted(t for t in targets if not t.startswith(f"{NAME}.model"))
        for module, targets in import_graph().items()
        if module.startswith(f"{NAME}.model")
    }
    assert {m: ts for m, ts in leaving.items() if ts} == {
        f"{NAME}.model.align": [f"{NAME}.checkpoint.hub", f"{NAME}.checkpoint.weights"],
        f"{NAME}.model.loss": [COLLECTIVES],
    }


def folder_of(module: str, root: Path = PACKAGE) -> str:
    """align_torch.train.trainer -> "train"; a top-level file (cli, __main__, defaults) is its own room."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (root / parts[1]).is_dir()) else module


def test_no_import_circle_between_folders():
    """Folders are layered: train uses evaluate (after each epoch) and evaluate never reaches back into train;
    they share the image transforms through data/."""
    folders: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        for target in targets:
            if folder_of(module) == "checkpoint" and target == CONFIG:
                continue
            if folder_of(target) != folder_of(module):
                folders.setdefault(folder_of(module), set()).add(folder_of(target))
    assert find_cycles(folders) == []


def test_checkpoint_code_reads_into_the_config_and_never_imports_the_model_class():
    graph = import_graph()
    up = {m: sorted(t for t in ts if t.startswith(f"{NAME}.model") and t != CONFIG) for m, ts in graph.items()}
    assert {m: ts for m, ts in up.items() if folder_of(m) == "checkpoint" and ts} == {}


def test_the_graph_sees_deferred_type_checking_and_relative_imports():
    """The reader must see what the rules count, or the two tests above pass on a blind graph."""
    graph = import_graph()
    # A top-level relative import two folders up.
    assert "align_torch.checkpoint.weights" in graph["align_torch.model.align"]
    # `from ..data import ...` resolves to the data package's __init__.py.
    assert "align_torch.data" in graph["align_torch.retrieval.embed_folder"]
    # Deferred imports inside functions and TYPE_CHECKING imports (commands/_common.py has both).
    assert "align_torch.preprocess.processor" in graph["align_torch.commands._common"]
    assert "align_torch.inference.embed" in graph["align_torch.commands._common"]
    # The entrance contributes nothing, though its TYPE_CHECKING block imports every public module.
    assert graph[ENTRANCE] == set()


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / NAME / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / NAME


def test_a_deferred_circle_and_a_tower_import_upward_are_found(tmp_path):
    """A small package with a circle closed by a function-level import under TYPE_CHECKING-free code, and one
    closed through a TYPE_CHECKING block: both are found; a clean package has none."""
    root = _write(
        tmp_path,
        {
            "__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a.x import f\n",
            "a/__init__.py": "",
            "a/x.py": "from ..b import y\n",
            "b/__init__.py": "",
            "b/y.py": "def g():\n    from ..a.x import f\n",
            "c/__init__.py": "",
            "c/p.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import q\n",
            "c/q.py": "import align_torch.c.p\n",
            "d.py": "import os\n",
        },
    )
    cycles = find_cycles(import_graph(root))
    assert cycles == [["align_torch.a.x", "align_torch.b.y"], ["align_torch.c.p", "align_torch.c.q"]]
    (root / "b" / "y.py").write_text("def g():\n    pass\n")
    (root / "c" / "q.py").write_text("import os\n")
    assert find_cycles(import_graph(root)) == []
