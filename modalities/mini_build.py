"""What every offline "mini" dataset builder shares: a manifest written last marks a dataset complete, and the
files are written to a temporary sibling directory that is moved into place at the end, so an interrupted
build, or several processes building at once (DDP ranks, dataloader workers, parallel tests), never leave a
half-written dataset behind. Each modality's ``mini.py`` supplies only what it writes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

MANIFEST = "mini_manifest.json"


def manifest_matches(root: str | os.PathLike, **expected) -> bool:
    """True when ``root`` holds a manifest whose keys equal ``expected`` (e.g. the builder's version and seed)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all(manifest.get(key) == value for key, value in expected.items())


def build_atomically(
    root: str | os.PathLike,
    write: Callable[[Path], dict],
    is_complete: Callable[[Path], bool],
    force: bool = False,
) -> Path:
    """Build a dataset at ``root`` with ``write(staging_dir) -> manifest``, publishing it only when complete.

    A no-op when ``is_complete(root)`` (unless ``force``). ``write`` fills the staging directory and returns
    the manifest, which is written last; the directory then replaces ``root``. If another process published
    a complete dataset first, its copy is kept.
    """
    root = Path(root)
    if is_complete(root) and not force:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-building-", dir=root.parent))
    try:
        manifest = write(staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if root.exists():
            if is_complete(root) and not force:  # another process finished first
                return root
            shutil.rmtree(root)
        try:
            os.replace(staging, root)
        except OSError:
            if not is_complete(root):  # not a concurrent builder winning the race: a real error
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root
