"""Turn plain config values into modules: ``instantiate`` (the ``_target_`` style), adapters, backbone specs.

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


def instantiate(spec: Mapping, **kwargs) -> Any:
    """Build an object from ``{"_target_": "package.module.Name", **arguments}`` (the config tree's one style).

    ``kwargs`` are added to the spec's arguments (they may not repeat one). Written here rather than taken from
    Hydra so that a task rebuilds from its checkpoint's plain hyper-parameters without Hydra.
    """
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ValueError(f"expected {{'_target_': 'package.module.Name', ...arguments}}, got {spec!r}")
    arguments = {key: value for key, value in spec.items() if key != "_target_"}
    clash = sorted(set(arguments) & set(kwargs))
    if clash:
        raise ValueError(f"{spec['_target_']}: {clash} may not be set in the config (they are filled in by the task)")
    return import_object(spec["_target_"])(**arguments, **kwargs)


def build_adapter(spec: Mapping) -> nn.Module:
    """Build an adapter from ``{"_target_": "modalities.<m>.adapter.<Class>", **arguments}``.

    The adapter must be an ``nn.Module`` with an integer ``out_chans`` (the C' of its B x C' x H x W output).
    """
    adapter = instantiate(spec)
    if not isinstance(adapter, nn.Module) or not isinstance(getattr(adapter, "out_chans", None), int):
        raise TypeError(f"{spec['_target_']} must be an nn.Module with an integer attribute out_chans (C')")
    return adapter


def check_backbone_spec(backbone: Mapping) -> tuple[str, dict]:
    """``{"name": ..., **create_backbone arguments}`` -> (name, arguments); the task sets in_chans / num_classes."""
    reserved = {"in_chans", "num_classes"} & set(backbone)
    if "name" not in backbone or reserved:
        raise ValueError(f"backbone needs 'name' and may not set {sorted(reserved)} (the task sets them)")
    return backbone["name"], {key: value for key, value in backbone.items() if key != "name"}
