"""Every notebook in notebooks/ runs top to bottom against the tiny local checkpoint, and is stored without
outputs. The notebooks read the model from ALIGN_MODEL, which the kernel inherits from this process."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_issue_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_zero_shot_and_retrieval.ipynb", "02_inside_align.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has stored outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_against_a_local_checkpoint_and_leaves_no_temp_folders(
    path, tiny_native_dir, monkeypatch, tmp_path
):
    nb = nbformat.read(path, as_version=4)
    temp = tmp_path.parent / f"{tmp_path.name}-temp"  # the kernel's temp dir (notebook 03 works in one)
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    assert 'os.environ.get("ALIGN_MODEL", "kakaobrain/align-base")' in "".join(c.source for c in nb.cells[:3])
    monkeypatch.setenv("ALIGN_MODEL", str(tiny_native_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the tiny model gains nothing from threads on a shared CPU
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a notebook that reaches for the Hub fails here, not hangs
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # With the Agg backend plt.show() draws nothing into the outputs and keeps the figures open: count them.
    nb.cells.append(nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nprint(len(plt.get_fignums()))"))
    client = NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}, allow_errors=False
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    warned = [o["text"] for o in outputs if o.output_type == "stream" and o["name"] == "stderr"]
    assert not [w for w in warned if "IProgress" in w], "the ipywidgets warning must be silenced"
    assert not any(tmp_path.iterdir()), f"{path.name} wrote into its working folder: {sorted(tmp_path.iterdir())}"
    assert not any(temp.iterdir()), f"{path.name} left folders in the temp dir: {sorted(temp.iterdir())}"
    assert int(nb.cells[-1].outputs[0]["text"]) > 0, f"{path.name} drew no figure"
