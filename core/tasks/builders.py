"""Turn plain config values into modules: import-path lookup, adapter construction, plain-container conversion.

Tasks store only what these helpers accept (strings, numbers, lists, dicts), so a checkpoint's hyper-parameters
rebuild the model anywhere, without Hydra or the config files.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn


def to_plain(value: Any) -> Any:
    """Recursively turn mappings into dicts and non-string sequences into lists (e.g. OmegaConf containers)."""
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [to_plain(item) for item in value]
    return value


def import_object(path: str) -> Any:
    """``"package.module.Name"`` -> the object ``Name`` of ``package.module``."""
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ValueError(f"expected an import path like 'package.module.Name', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(f"cannot import module {module_name!r} (from {path!r}): {error}") from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attribute!r} (from {path!r})") from None


def build_adapter(spec: Mapping) -> nn.Module:
    """Build an adapter from ``{"class_path": "pkg.mod.Class", "init_args": {...}}``.

    The adapter must be an ``nn.Module`` with an ``out_chans`` attribute (the C' of its B x C' x H x W output).
    """
    unknown = set(spec) - {"class_path", "init_args"}
    if "class_path" not in spec or unknown:
        raise ValueError(f"adapter spec needs 'class_path' and optional 'init_args'; got keys {sorted(spec)}")
    adapter = import_object(spec["class_path"])(**dict(spec.get("init_args") or {}))
    if not isinstance(adapter, nn.Module) or not isinstance(getattr(adapter, "out_chans", None), int):
        raise TypeError(f"{spec['class_path']} must be an nn.Module with an integer attribute out_chans (C')")
    return adapter
