"""Every notebook under notebooks/ is committed executed, with its figures (``make notebooks``), within the size
budget, and still executes top to bottom (nbclient); ``make lab`` serves them with JupyterLab.

The default suite runs them with ``NOTEBOOK_QUICK=1`` (a few-batch run each, in a temporary directory); the slow
test runs them as a user would (latest run under runs/, or a new one at the mini budget).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest
from nbclient import NotebookClient

from experiments.notebooks import SIZE_BUDGET
from tests.conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = {"audio", "video", "pointcloud", "timeseries", "results", "effective_receptive_field", "dense"}


def test_the_notebooks_are_committed_executed_with_their_figures():
    assert EXPECTED <= {path.stem for path in NOTEBOOKS}
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(cell.execution_count is not None for cell in code), f"{path.name}: not executed (make notebooks)"
        for cell in code:
            assert "sys.path" not in cell.source, f"{path.name}: import the installed packages, no path hacks"
        assert_ran_and_plotted(notebook)
        assert path.stat().st_size <= SIZE_BUDGET, f"{path.name} is over the {SIZE_BUDGET} byte budget"
        assert str(REPO_ROOT) not in path.read_text(), f"{path.name}: outputs hold this machine's repository path"


def execute(path, tmp_path, timeout: int) -> tuple[nbformat.NotebookNode, float]:
    """Run ``path`` in a fresh kernel started in ``tmp_path``.

    Callers point ``TMPDIR`` at ``tmp_path`` too: the notebooks train into ``tempfile.mkdtemp()`` directories
    (hundreds of MB in all) and the kernel inherits the variable, so those land where pytest cleans up instead of
    piling up in /tmp run after run.
    """
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
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    notebook, seconds = execute(path, tmp_path, timeout=600)
    assert_ran_and_plotted(notebook)
    print(f"{path.name}: {seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_executes_in_full(path, tmp_path, monkeypatch):
    monkeypatch.delenv("NOTEBOOK_QUICK", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    notebook, seconds = execute(path, tmp_path, timeout=1800)
    assert_ran_and_plotted(notebook)
    print(f"{path.name}: {seconds:.1f} s")


def test_jupyterlab_serves_the_notebooks(tmp_path):
    """What ``make lab`` starts: a JupyterLab server on localhost that lists and opens the notebooks."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = "unireplknet-test"
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--notebook-dir={REPO_ROOT / 'notebooks'}",
         f"--ServerApp.runtime_dir={tmp_path}", *(["--allow-root"] if os.geteuid() == 0 else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def get(route: str):
            request = urllib.request.Request(f"http://127.0.0.1:{port}{route}",
                                             headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()

        deadline = time.time() + 90
        while True:
            try:
                status, _ = get("/api/status")
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "JupyterLab did not start"
                time.sleep(1)
        assert status == 200
        listing = json.loads(get("/api/contents/")[1])
        assert EXPECTED <= {item["name"].removesuffix(".ipynb") for item in listing["content"]}
        notebook = json.loads(get("/api/contents/audio.ipynb")[1])
        assert notebook["type"] == "notebook" and notebook["content"]["cells"]
        assert get("/lab")[0] == 200  # the JupyterLab page itself
    finally:
        server.terminate()
        server.wait(timeout=30)
