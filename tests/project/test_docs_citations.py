"""Every repository path, link and `align_torch` name that README.md and the docs/ pages cite exists.

A path counts as the repository's when it starts at one of its top folders (`tests/model/test_parity.py`,
`bench/README.md`), or is a Python file under a folder of the package (`model/align.py` in the folders'
table); a user's own files in examples (`run/final`, `data/cifar10`) are neither. Dotted names (`align_torch.inference.embed.embed_images`)
must import, and so must every name a code block imports from the package, run by a test or not.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("align_torch", "tests", "bench", "convert", "notebooks", "docs", ".ci")
PACKAGE = {p.name for p in (ROOT / "align_torch").iterdir() if p.is_dir() and not p.name.startswith("_")}
FILE = re.compile(r"[\w.*{}-]+(?:/[\w.*{}-]+)*/?")


def cited_paths(text: str) -> set[str]:
    """Path-like words inside `code` spans and code blocks that start at a repository or package folder."""
    spans = re.findall(r"```[a-z]*\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
    found = set()
    for span in spans:
        for word in FILE.findall(span):
            first = word.split("/", 1)[0]
            if "/" in word and (first in TOP or (first in PACKAGE and word.endswith(".py"))):
                found.add(word.rstrip("/.,"))
    return found


def exists(path: str) -> bool:
    base = ROOT if path.split("/", 1)[0] in TOP else ROOT / "align_torch"
    if "{" in path:  # a placeholder such as img_emb_{N}.npy: its folder must exist
        path = path.rsplit("/", 1)[0]
    return any(base.glob(path)) if "*" in path else (base / path).exists()


def cited_names(text: str) -> set[str]:
    """`align_torch.a.b` dotted names, and `from align_torch.a import b, c` imports as `align_torch.a.b`."""
    names = {m.rstrip(".") for m in re.findall(r"\balign_torch(?:\.\w+)+", text)}
    for module, imported in re.findall(r"from (align_torch[\w.]*) import \(?([\w\s,]+?)\)?\n(?!\s)", text + "\n"):
        names.update(f"{module}.{name.strip()}" for name in imported.split(",") if name.strip())
    return {n for n in names if not n.startswith("align_torch.util.fileio.path_to_text/")}


def resolves(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_cited_repository_path_exists(page: Path):
    missing = sorted(p for p in cited_paths(page.read_text(encoding="utf-8")) if not exists(p))
    assert not missing, f"{page.relative_to(ROOT)} cites paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_cited_align_torch_name_imports(page: Path):
    missing = sorted(n for n in cited_names(page.read_text(encoding="utf-8")) if not resolves(n))
    assert not missing, f"{page.relative_to(ROOT)} cites names that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_local_link_and_anchor_exists(page: Path):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file) if file else page
        if not linked.exists():
            broken.append(target)
        elif anchor and anchor not in {slug(h) for h in re.findall(r"^#+ (.*)$", linked.read_text(), re.M)}:
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to what does not exist: {broken}"


def test_the_front_page_is_short_and_maps_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    for page in (ROOT / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"README's map does not link docs/{page.name}"


def test_license_citation_and_python_versions_are_stated():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    minimum = project["requires-python"].removeprefix(">=")
    versions = [c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if re.search(r"Python :: 3\.\d+$", c)]
    assert versions and versions[0] == minimum, (minimum, versions)
    assert f"Python {minimum} or newer" in (ROOT / "README.md").read_text()
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "Apache-2.0"
    assert cff["preferred-citation"]["title"].startswith("Scaling Up Visual and Vision-Language Representation")
