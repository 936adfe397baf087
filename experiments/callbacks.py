"""Lightning callbacks of the harness: training wall time and throughput that survive a resume; weight EMA.

``RunStats`` keeps its totals in the checkpoint (``state_dict``), so a run that is killed and resumed from
``last.ckpt`` reports the time and samples of the epochs it kept, as an uninterrupted run would. The totals
are frozen in ``fit_summary`` when fit ends: testing a checkpoint afterwards restores callback states too.

``WeightEMA`` keeps an exponential moving average of the task's weights (also in the checkpoints, so the EMA
of the tested best checkpoint is the one evaluated); ``evaluate_ema`` runs the test loop once more with the
EMA weights swapped in (``experiments.harness.test_and_deploy`` calls it, metrics get an ``_ema`` suffix).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import lightning as L
import torch
from torch import nn


class RunStats(L.Callback):
    """Training time (validation excluded), fit wall time and samples seen, summed over all ranks."""

    def __init__(self):
        self.train_seconds = 0.0  # time inside training epochs, validation excluded
        self.fit_seconds = 0.0  # wall time of fit, validation included
        self.samples = 0  # training samples seen by this process
        self._train_started: float | None = None
        self._fit_started: float | None = None
        self.fit_summary: dict | None = None  # the totals when fit ended

    # the training clock pauses while validation runs inside a training epoch
    def _start(self) -> None:
        if self._train_started is None:
            self._train_started = time.perf_counter()

    def _pause(self) -> None:
        if self._train_started is not None:
            self.train_seconds += time.perf_counter() - self._train_started
            self._train_started = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_started = time.perf_counter()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._pause()
        if self._fit_started is not None:
            self.fit_seconds += time.perf_counter() - self._fit_started
            self._fit_started = None
        self.fit_summary = self.summary(trainer.world_size)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._pause()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._pause()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.training and not trainer.sanity_checking and not trainer.fit_loop.epoch_loop.done:
            self._start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.samples += len(batch[1])

    def summary(self, world_size: int = 1) -> dict:
        """Totals for results.json: samples/s counts every rank (each rank sees its own share)."""
        samples = self.samples * world_size
        return {
            "train_wall_time_s": round(self.fit_seconds, 3),
            "train_time_s": round(self.train_seconds, 3),
            "train_samples": samples,
            "train_samples_per_s": round(samples / self.train_seconds, 2) if self.train_seconds > 0 else None,
        }

    # persisted in every checkpoint: a resumed run continues the totals
    def state_dict(self) -> dict:
        train_seconds = self.train_seconds
        if self._train_started is not None:
            train_seconds += time.perf_counter() - self._train_started
        fit_seconds = self.fit_seconds
        if self._fit_started is not None:
            fit_seconds += time.perf_counter() - self._fit_started
        return {"train_seconds": train_seconds, "fit_seconds": fit_seconds, "samples": self.samples}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_seconds = float(state_dict["train_seconds"])
        self.fit_seconds = float(state_dict["fit_seconds"])
        self.samples = int(state_dict["samples"])


class WeightEMA(L.Callback):
    """EMA of the task's weights: after every ``every_n_steps``-th optimizer step, for every floating-point
    parameter ``ema = decay * ema + (1 - decay) * w``; buffers (BatchNorm statistics ...) are copied.

    Written here rather than with ``timm.utils.ModelEmaV3``: that keeps a deep copy of the whole module (a
    LightningModule holding its trainer, metrics and data-dependent state), while a state dict of tensors is
    all the test needs, is swapped in with ``load_state_dict`` and goes into the checkpoint as callback state
    (a resumed run continues its EMA; testing the best checkpoint restores the EMA saved with it).

    Args:
        decay: the EMA decay per update.
        every_n_steps: update every n optimizer steps (gradient accumulation counts one step per update).
        evaluate: test the EMA weights too (``evaluate_ema``; metrics logged with an ``_ema`` suffix).
        device: where the EMA lives (e.g. ``cpu`` to spare accelerator memory); null = the model's device.
    """

    def __init__(self, decay: float = 0.9999, every_n_steps: int = 1, evaluate: bool = True,
                 device: str | None = None):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.decay = float(decay)
        self.every_n_steps = int(every_n_steps)
        self.evaluate = bool(evaluate)
        self.device = device
        self.weights: dict[str, torch.Tensor] | None = None  # EMA of the task's state dict
        self.updates = 0
        self._last_step: int | None = None
        self._averaged: set[str] = set()  # names of the parameters (the rest of the state dict is copied)

    def _init(self, pl_module: nn.Module) -> None:
        device = torch.device(self.device) if self.device else None
        self._averaged = {name for name, p in pl_module.named_parameters(remove_duplicate=False)
                          if p.is_floating_point()}
        if self.weights is None:
            self.weights = {k: v.detach().clone().to(device or v.device) for k, v in pl_module.state_dict().items()}
        else:  # restored from a checkpoint
            live = pl_module.state_dict()
            self.weights = {k: v.to(device or live[k].device) for k, v in self.weights.items()}

    def on_train_start(self, trainer, pl_module) -> None:
        self._init(pl_module)
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:  # accumulating gradients, or a skipped batch: no optimizer step
            return
        self._last_step = step
        if step % self.every_n_steps == 0:
            self.update(pl_module)

    @torch.no_grad()
    def update(self, pl_module: nn.Module) -> None:
        """One EMA step from the module's current weights."""
        if self.weights is None:
            self._init(pl_module)
        ema, live = [], []
        for name, value in pl_module.state_dict().items():
            target = self.weights[name]
            if name in self._averaged:
                ema.append(target)
                live.append(value.detach().to(target.device))
            else:
                target.copy_(value)
        if ema:
            torch._foreach_mul_(ema, self.decay)
            torch._foreach_add_(ema, live, alpha=1.0 - self.decay)
        self.updates += 1

    @contextmanager
    def swapped(self, pl_module: nn.Module) -> Iterator[nn.Module]:
        """The module with the EMA weights loaded; its own weights are put back afterwards."""
        if self.weights is None:
            raise RuntimeError("WeightEMA has no weights yet (no training step was taken)")
        live = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        pl_module.load_state_dict(self.weights)
        try:
            yield pl_module
        finally:
            pl_module.load_state_dict(live)

    def state_dict(self) -> dict:
        return {"weights": self.weights, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state_dict: dict) -> None:
        self.weights = state_dict["weights"]
        self.updates = int(state_dict["updates"])


def evaluate_ema(trainer: L.Trainer, task: L.LightningModule, datamodule) -> dict:
    """The test metrics of the EMA weights (``test/acc_ema`` ...) when a ``WeightEMA`` with ``evaluate`` and
    weights is among the trainer's callbacks; else ``{}``. The task keeps its own weights afterwards."""
    ema = next((cb for cb in trainer.callbacks if isinstance(cb, WeightEMA)), None)
    if ema is None or not ema.evaluate or ema.weights is None:
        return {}
    with ema.swapped(task):
        metrics = trainer.test(task, datamodule=datamodule)[0]
    return {f"{key}_ema": value for key, value in metrics.items()}
