"""Optimizers and learning-rate schedules of the paper's recipes, built from plain config values.

- Optimizers: AdamW / Adam (/ SGD), with no weight decay on 1-D parameters (norm weights, layer scales) and
  biases, nor on names a model lists in ``no_weight_decay()``.
- Layer-wise learning-rate decay (``layer_decay=r`` < 1, ConvNeXt / BEiT style): a parameter of layer ``i`` of
  ``L`` trains at ``lr * r ** (L - i)``. Layers (``layer_ids``): the stem is layer 0, every block its own layer
  counting across the stages, a downsampling layer shares the id of the first block of its stage, the final
  norm / head are layer ``L`` (no decay). Outside the backbone, the adapter before it is layer 0 and everything
  after it (a forecaster's decoder) layer ``L``. ``layer_decay`` null or 1 keeps the two plain groups.
- Schedules, stepped every optimizer step as a multiplier of the base LR:
  ``cosine``: linear warmup, then cosine decay to ``min_lr`` (the ImageNet recipe, Table 14);
  ``step``: x ``gamma`` every ``step_epochs`` epochs from epoch ``start_epoch`` (0-based; the audio recipe
  "LR x0.85 each epoch from epoch 5" is ``gamma=0.85, step_epochs=1, start_epoch=5``);
  ``constant``: warmup then flat.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
SCHEDULES = ("cosine", "step", "constant", "poly")


def _depth_starts(depths: list[int]) -> tuple[list[int], int]:
    """The layer id of the first block of every stage (the stem is 0) and the top layer id L."""
    starts, start = [], 1
    for depth in depths:
        starts.append(start)
        start += depth
    return starts, start


def backbone_layer_ids(backbone: nn.Module) -> tuple[Callable[[str], int], int]:
    """``(layer_id(name), L)`` for a backbone's parameter names (relative to the backbone).

    UniRepLKNet: ``downsample_layers.0`` (stem) = 0, ``downsample_layers.<i>`` = first block of stage i,
    ``stages.<i>.<j>`` its own id, ``norm`` / ``head`` = L. timm ResNet: ``conv1`` / ``bn1`` = 0,
    ``layer<i+1>.<j>`` (its ``downsample`` included) its block's id, ``fc`` = L. timm ConvNeXt: ``stem`` = 0,
    ``stages.<i>.downsample`` = first block of stage i, ``stages.<i>.blocks.<j>``, ``norm_pre`` / ``head`` = L.
    """
    if hasattr(backbone, "downsample_layers") and hasattr(backbone, "stages"):  # UniRepLKNet
        starts, top = _depth_starts([len(stage) for stage in backbone.stages])

        def unireplknet(name: str) -> int:
            parts = name.split(".")
            if parts[0] == "downsample_layers":
                i = int(parts[1])
                return 0 if i == 0 else starts[i]
            if parts[0] == "stages":
                return starts[int(parts[1])] + int(parts[2])
            return top

        return unireplknet, top
    if all(hasattr(backbone, f"layer{i}") for i in range(1, 5)) and hasattr(backbone, "conv1"):  # timm ResNet
        starts, top = _depth_starts([len(getattr(backbone, f"layer{i}")) for i in range(1, 5)])

        def resnet(name: str) -> int:
            parts = name.split(".")
            if parts[0] in ("conv1", "bn1"):
                return 0
            if parts[0].startswith("layer") and parts[0][5:].isdigit():
                return starts[int(parts[0][5:]) - 1] + int(parts[1])
            return top

        return resnet, top
    if hasattr(backbone, "stem") and hasattr(backbone, "stages") and all(
            hasattr(stage, "blocks") for stage in backbone.stages):  # timm ConvNeXt
        starts, top = _depth_starts([len(stage.blocks) for stage in backbone.stages])

        def convnext(name: str) -> int:
            parts = name.split(".")
            if parts[0] == "stem":
                return 0
            if parts[0] == "stages":
                i = int(parts[1])
                if parts[2] == "blocks":
                    return starts[i] + int(parts[3])
                return starts[i]  # downsample
            return top

        return convnext, top
    raise ValueError(f"layer_decay: no layer rule for backbone {type(backbone).__name__} "
                     "(UniRepLKNet, timm ResNet and ConvNeXt have one)")


def _prefix_of(model: nn.Module, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    return next((prefix for prefix, m in model.named_modules() if m is module), None)


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Layer id of every parameter name of ``model`` (a backbone, or a task / wrapper with a ``backbone``
    attribute and optionally an ``adapter``), and the top layer id L."""
    backbone = getattr(model, "backbone", None)
    backbone = backbone if isinstance(backbone, nn.Module) else model
    backbone_prefix = _prefix_of(model, backbone)
    if backbone_prefix is None:
        raise ValueError("layer_decay: the model's backbone is not one of its submodules")
    adapter_prefix = _prefix_of(model, getattr(model, "adapter", None))
    rule, top = backbone_layer_ids(backbone)

    def under(name: str, prefix: str | None) -> str | None:
        if prefix is None:
            return None
        if prefix == "":
            return name
        return name[len(prefix) + 1:] if name.startswith(prefix + ".") else None

    ids = {}
    for name, _ in model.named_parameters():
        if under(name, adapter_prefix) is not None:
            ids[name] = 0
        elif (relative := under(name, backbone_prefix)) is not None:
            ids[name] = rule(relative)
        else:
            ids[name] = top  # after the backbone (a forecaster's decoder, a separate head)
    return ids, top


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None,
                 lr: float | None = None) -> list[dict]:
    """Two groups: decayed (>= 2-D weights) and not decayed (1-D parameters, biases, ``no_weight_decay()``).

    With ``layer_decay`` r (0 < r < 1) and the base ``lr``: those two groups per layer id i (empty ones left
    out), each with ``lr = lr * r ** (L - i)`` and its ``lr_scale`` / ``layer_id``.
    """
    skip: set[str] = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            skip |= {f"{prefix}.{name}" if prefix else name for name in module.no_weight_decay()}
    if layer_decay is not None and not 0.0 < float(layer_decay) <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1] or null, got {layer_decay!r}")
    layered = layer_decay is not None and float(layer_decay) != 1.0
    if layered:
        if lr is None:
            raise ValueError("layer_decay needs the base lr")
        ids, top = layer_ids(model)
        groups: dict[tuple[int, bool], dict] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            no_wd = param.ndim <= 1 or name.endswith(".bias") or name in skip
            key = (ids[name], no_wd)
            if key not in groups:
                scale = float(layer_decay) ** (top - ids[name])
                groups[key] = {"params": [], "weight_decay": 0.0 if no_wd else weight_decay,
                               "lr": lr * scale, "lr_scale": scale, "layer_id": ids[name]}
            groups[key]["params"].append(param)
        return [groups[key] for key in sorted(groups)]
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, name: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.05,
                    layer_decay: float | None = None, **kwargs) -> torch.optim.Optimizer:
    """``name`` in OPTIMIZERS; ``layer_decay`` as in ``param_groups``; ``kwargs`` go to the torch optimizer
    (betas, eps, momentum ...)."""
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    groups = param_groups(model, weight_decay, layer_decay=layer_decay, lr=lr)
    return OPTIMIZERS[key](groups, lr=lr, **kwargs)


def lr_multiplier(
    name: str,
    steps_per_epoch: int,
    total_steps: int,
    warmup_epochs: float = 0.0,
    warmup_start: float = 1e-3,
    min_lr_ratio: float = 0.0,
    gamma: float = 0.85,
    step_epochs: int = 1,
    start_epoch: int = 0,
    power: float = 1.0,
) -> Callable[[int], float]:
    """The schedule as a function of the optimizer step: base LR multiplier in [0, 1].

    Args:
        name: one of SCHEDULES.
        steps_per_epoch, total_steps: optimizer steps per epoch and in the whole run.
        warmup_epochs: linear warmup length (may be fractional), from ``warmup_start`` x base LR.
        min_lr_ratio: cosine floor as a fraction of the base LR.
        gamma, step_epochs, start_epoch: ``step`` decay factor, period, and the first epoch it applies to.
        power: ``poly`` decay exponent: (1 - progress)^power down to ``min_lr_ratio`` (mmseg's schedule).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown LR schedule {name!r}; valid choices: {', '.join(SCHEDULES)}")
    steps_per_epoch = max(1, int(steps_per_epoch))
    warmup = int(round(warmup_epochs * steps_per_epoch))
    total = max(total_steps, warmup + 1)

    def multiplier(step: int) -> float:
        if step < warmup:
            return warmup_start + (1.0 - warmup_start) * step / warmup
        if name == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if name == "poly":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress) ** power
        if name == "step":
            epoch = step // steps_per_epoch
            if epoch < start_epoch:
                return 1.0
            return gamma ** ((epoch - start_epoch) // step_epochs + 1)
        return 1.0

    return multiplier


def build_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int,
                    name: str = "cosine", **kwargs) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following ``lr_multiplier`` (keyword arguments as there)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(name, steps_per_epoch, total_steps, **kwargs))


def count_parameters(modules: Iterable[nn.Module]) -> int:
    """Number of parameters of the given modules (shared parameters counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for param in module.parameters():
            seen[id(param)] = param.numel()
    return sum(seen.values())
