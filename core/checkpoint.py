"""Safe loading of published and project checkpoints into a backbone.

Files are read with weights-only unpickling, so a file crafted to run code on load is refused. Plain state
dicts and dicts wrapping one ({"model": ...}, {"state_dict": ...}) are accepted; 3-channel stem weights are
adapted to other ``in_chans`` (timm's rule). A model may convert a checkpoint's state dict to its own structure
first with a ``checkpoint_filter_fn(state, strict, skip_head)`` method (timm's name for such remapping):
UniRepLKNet's turns a training-structure checkpoint into its deploy structure. This module knows no model.
"""

from __future__ import annotations

import pickle
import zipfile
from os import PathLike
from pathlib import Path

import torch
from timm.models import adapt_input_conv
from torch import nn

STEM_WEIGHT = "downsample_layers.0.0.weight"
WRAPPER_KEYS = ("model", "state_dict", "model_ema")


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read, was refused, or does not fit the model."""


def read_state_dict(path: str | PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat {key: tensor} dict, never executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is mostly boilerplate; keep its one specific line
        reason = next((ln for ln in str(err).splitlines() if "GLOBAL" in ln or "operand" in ln), str(err))
        raise CheckpointError(
            f"refused to load {path}: weights-only unpickling rejected it ({reason.strip()}). Either the file "
            "is corrupt or not a PyTorch checkpoint, or it holds Python objects beyond tensors and plain "
            "containers, and loading it could execute code. Re-save the weights as a plain state dict "
            "(torch.save(model.state_dict(), path)) from a trusted source."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(
            f"could not read checkpoint {path}: the file is truncated, corrupt or not a PyTorch checkpoint "
            f"({type(err).__name__}: {err})"
        ) from err
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} is not a state dict: expected {{name: tensor}} (optionally wrapped as {{'model': ...}} "
            f"or {{'state_dict': ...}}), got {type(obj).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _describe(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def _fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], skip_head: bool, path) -> dict:
    expected = model.state_dict()
    state = dict(state)
    stem = state.get(STEM_WEIGHT)
    if stem is not None and STEM_WEIGHT in expected and stem.shape[1] != expected[STEM_WEIGHT].shape[1]:
        state[STEM_WEIGHT] = adapt_input_conv(expected[STEM_WEIGHT].shape[1], stem)
    headless = "head.weight" not in expected
    if skip_head == "auto":  # timm's convention for pretrained weights: a head of another size is dropped
        skip_head = "head.weight" in state and not headless and state["head.weight"].shape != expected["head.weight"].shape
    if skip_head or headless:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        if skip_head and not headless:  # keep the model's own (fresh) head
            state.update({k: v for k, v in expected.items() if k.startswith("head.")})
    return state


def load_checkpoint(
    model: nn.Module, path: str | PathLike, strict: bool = True, skip_head: bool | str = False
) -> nn.Module:
    """Load a checkpoint file into ``model`` (in place) and return it.

    Args:
        strict: raise if keys are missing or unexpected, or shapes differ (the message lists them).
        skip_head: ignore the checkpoint's classifier (e.g. 1000 ImageNet classes into a 35-class model);
            "auto" ignores it only when its size differs from the model's.
    A model built with ``num_classes=0`` ignores the checkpoint head by itself.
    """
    return load_state(model, read_state_dict(path), strict, skip_head, source=path)


def load_state(
    model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True, skip_head: bool | str = False,
    source: str | PathLike = "state dict",
) -> nn.Module:
    """``load_checkpoint`` for a state dict already read (``source`` names it in error messages)."""
    path = source
    convert = getattr(model, "checkpoint_filter_fn", None)
    if convert is not None:
        state = convert(state, strict=strict, skip_head=skip_head)
    state = _fit_state_dict(model, state, skip_head, path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)})"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"checkpoint {path} does not fit {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys: {_describe(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys: {_describe(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches: {_describe(mismatched)}")
            if any(m.startswith("head.") for m in mismatched):
                lines.append("  (a different number of classes? pass skip_head=True to keep a fresh head)")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=strict)
    return model
