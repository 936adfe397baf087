"""Every notebook under notebooks/ is committed without outputs and executes top to bottom (nbclient).

The default suite runs them with ``NOTEBOOK_QUICK=1`` (a few-batch run each, in a temporary directory); the slow
test runs them as a user would (latest run under runs/, or a new one at the mini budget).
"""

from __future__ import annotations

import time

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = {"audio", "video", "pointcloud", "timeseries", "results", "effective_receptive_field"}


def test_the_notebooks_are_there_and_committed_without_outputs():
    assert EXPECTED <= {path.stem for path in NOTEBOOKS}
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"
                assert "sys.path" not in cell.source, f"{path.name}: import the installed packages, no path hacks"


def execute(path, tmp_path, timeout: int) -> tuple[nbformat.NotebookNode, float]:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    started = time.perf_counter()
    client.execute()
    return notebook, time.perf_counter() - started


def assert_ran_and_plotted(notebook: nbformat.NotebookNode) -> None:
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was drawn"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_executes_in_quick_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("NOTEBOOK_QUICK", "1")
    notebook, seconds = execute(path, tmp_path, timeout=600)
    assert_ran_and_plotted(notebook)
    print(f"{path.name}: {seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_executes_in_full(path, tmp_path, monkeypatch):
    monkeypatch.delenv("NOTEBOOK_QUICK", raising=False)
    notebook, seconds = execute(path, tmp_path, timeout=1800)
    assert_ran_and_plotted(notebook)
    print(f"{path.name}: {seconds:.1f} s")
