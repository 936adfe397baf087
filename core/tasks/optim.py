"""Optimizers and learning-rate schedules of the paper's recipes, built from plain config values.

- Optimizers: AdamW / Adam (/ SGD), with no weight decay on 1-D parameters (norm weights, layer scales) and
  biases, nor on names a model lists in ``no_weight_decay()``.
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
SCHEDULES = ("cosine", "step", "constant")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed (>= 2-D weights) and not decayed (1-D parameters, biases, ``no_weight_decay()``)."""
    skip: set[str] = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            skip |= {f"{prefix}.{name}" if prefix else name for name in module.no_weight_decay()}
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
                    **kwargs) -> torch.optim.Optimizer:
    """``name`` in OPTIMIZERS; ``kwargs`` go to the torch optimizer (betas, eps, momentum ...)."""
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return OPTIMIZERS[key](param_groups(model, weight_decay), lr=lr, **kwargs)


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
) -> Callable[[int], float]:
    """The schedule as a function of the optimizer step: base LR multiplier in [0, 1].

    Args:
        name: one of SCHEDULES.
        steps_per_epoch, total_steps: optimizer steps per epoch and in the whole run.
        warmup_epochs: linear warmup length (may be fractional), from ``warmup_start`` x base LR.
        min_lr_ratio: cosine floor as a fraction of the base LR.
        gamma, step_epochs, start_epoch: ``step`` decay factor, period, and the first epoch it applies to.
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
