"""Execute the notebooks in place and keep their outputs, so the committed notebooks show their figures
(``make notebooks`` runs this, then commits them).

Each notebook runs top to bottom as a user would run it (on the latest completed run under ``runs/<modality>/``,
or a new one trained at the mini budget), with the repository root as working directory. Afterwards every PNG
figure is downscaled to at most ``MAX_WIDTH`` pixels and re-encoded with an adaptive palette, the repository's
absolute path is removed from the text outputs, and a notebook over ``SIZE_BUDGET`` bytes is an error.

    python -m experiments.notebooks                     # every notebook under notebooks/
    python -m experiments.notebooks notebooks/audio.ipynb
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
MAX_WIDTH = 900
SIZE_BUDGET = 1_000_000  # bytes per committed notebook


def shrink_png(data: str, max_width: int = MAX_WIDTH) -> str:
    """A base64 PNG, downscaled to ``max_width`` and re-encoded with a 256-colour adaptive palette."""
    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    out = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    return base64.b64encode(out.getvalue()).decode("ascii")


def _without_repo_path(text: str) -> str:
    return text.replace(f"{REPO_ROOT}/", "").replace(str(REPO_ROOT), ".")


def tidy(notebook: nbformat.NotebookNode) -> None:
    """Shrink the figures and drop the machine-specific bits (repository path, execution timings)."""
    for cell in notebook.cells:
        cell.get("metadata", {}).pop("execution", None)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                data["image/png"] = shrink_png(data["image/png"])
            for kind in [kind for kind in data if kind.startswith("text/")]:
                data[kind] = _without_repo_path(data[kind])
            if output.get("output_type") == "stream":
                output["text"] = _without_repo_path(output["text"])


def execute_in_place(path: Path, timeout: int = 1800) -> tuple[int, float]:
    """Execute ``path`` with outputs kept; returns (size in bytes, seconds)."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO_ROOT)}})
    started = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - started
    tidy(notebook)
    nbformat.write(notebook, path)
    return path.stat().st_size, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: every notebook under notebooks/)")
    args = parser.parse_args(argv)
    over = []
    for path in args.paths or sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        size, seconds = execute_in_place(path)
        print(f"{path.name}: executed in {seconds:.0f} s, {size / 1e3:.0f} kB")
        if size > SIZE_BUDGET:
            over.append(path.name)
    if over:
        print(f"over the {SIZE_BUDGET / 1e6:.0f} MB budget: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
