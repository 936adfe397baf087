"""The one way this project imports open3d: ``o3d = import_open3d()``.

open3d-cpu's ``libOpen3D.so`` links against ``libusb-1.0.so.0``, a system library that a fresh machine does
not have (open3d then fails to import). The pinned ``libusb-package`` wheel ships that library; loading it
with ``RTLD_GLOBAL`` before open3d makes the dynamic linker resolve open3d's dependency to the packaged copy,
so nothing outside the virtual environment is needed. The packaged copy is always preferred, also on
machines that have a system libusb, so every machine runs the same library.

Written by hand because neither open3d nor libusb-package wires this up: libusb-package only hands the
library's path to pyusb.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from types import ModuleType


@functools.lru_cache(maxsize=None)
def preload_libusb() -> Path:
    """Load the libusb shipped by ``libusb-package`` into the process (global symbols); returns its path."""
    try:
        import libusb_package
    except ImportError as err:  # pragma: no cover - the package is a pinned dependency
        raise ImportError(
            "the point-cloud modality needs the 'libusb-package' wheel (open3d links against libusb-1.0); "
            "reinstall the project's environment with `make install`"
        ) from err
    path = libusb_package.get_library_path()
    if path is None:  # pragma: no cover - every Linux/macOS/Windows wheel of libusb-package has the library
        raise ImportError(f"libusb-package {libusb_package.__version__} ships no libusb library for this platform")
    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    return Path(path)


@functools.lru_cache(maxsize=None)
def import_open3d() -> ModuleType:
    """The ``open3d`` module, imported after ``preload_libusb`` (a heavy import: call it where a mesh or cloud
    is actually handled, not at module import time)."""
    preload_libusb()
    import open3d

    return open3d


__all__ = ["import_open3d", "preload_libusb"]
