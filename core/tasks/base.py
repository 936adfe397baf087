"""What every task shares: the adapter and backbone built from plain values, optimizer and per-step schedule,
``reparameterize`` and the deploy weights (save, load, equality check).

A task subclass builds its own head and metrics and declares its steps; modality-specific behaviour reaches it
through its configuration (e.g. which mixup to apply) and through the adapter (how many views it made of each
sample, ``adapter.num_views``), never by guessing from tensor shapes.
"""

from __future__ import annotations

import math
import os

import lightning as L
import torch
from torch import nn

from core import create_backbone, reparameterize
from core.tasks.builders import build_adapter, check_backbone_spec
from core.tasks.optim import build_optimizer, build_scheduler


class Task(L.LightningModule):
    """Base of the tasks (``ClassificationTask``, ``ForecastingTask``).

    Args:
        optimizer: ``core.tasks.optim.build_optimizer`` arguments (name, lr, weight_decay, betas ...).
        scheduler: ``core.tasks.optim.lr_multiplier`` arguments (name, warmup_epochs ...); None: constant LR.
    """

    def __init__(self, optimizer: dict | None = None, scheduler: dict | None = None):
        super().__init__()
        self.optimizer_args = dict(optimizer or {})
        self.scheduler_args = dict(scheduler) if scheduler else None
        self.deployed = False

    @staticmethod
    def build_adapter_and_backbone(adapter: dict, backbone: dict, num_classes: int) -> tuple[nn.Module, nn.Module]:
        """The adapter, and the backbone whose ``in_chans`` is the adapter's ``out_chans`` (C')."""
        name, kwargs = check_backbone_spec(backbone)
        adapter_module = build_adapter(adapter)
        return adapter_module, create_backbone(name, in_chans=adapter_module.out_chans, num_classes=num_classes,
                                               **kwargs)

    # --- deploy structure ------------------------------------------------------------------------------

    def reparameterize(self) -> "Task":
        """Switch the backbone to its deploy structure (in place, idempotent); call in eval mode.

        Afterwards the test metrics are logged with a ``_deploy`` suffix.
        """
        reparameterize(self)
        self.deployed = True
        return self

    def save_deploy(self, path: str | os.PathLike) -> None:
        """Save the deploy weights with the hyper-parameters that rebuild the task (``load_deploy``)."""
        torch.save({"hyper_parameters": dict(self.hparams), "state_dict": self.state_dict()}, path)

    @classmethod
    def load_deploy(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "Task":
        """Rebuild a task from weights saved by ``save_deploy`` (weights only: nothing in the file is run)."""
        payload = torch.load(path, map_location=map_location, weights_only=True)
        task = cls(**payload["hyper_parameters"]).eval().reparameterize()
        task.load_state_dict(payload["state_dict"])
        return task

    @torch.no_grad()
    def deploy_difference(self, trained: nn.Module, inputs) -> float:
        """Largest |output difference| between ``trained`` (the training structure) and this task on ``inputs``."""
        return float((trained(inputs) - self(inputs)).abs().max())

    # --- optimization ----------------------------------------------------------------------------------

    def _steps_per_epoch(self) -> tuple[int, int]:
        trainer = self.trainer
        total = int(trainer.estimated_stepping_batches)  # also makes num_training_batches known
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            return max(1, total), max(1, total)
        per_epoch = max(1, math.ceil(batches / max(1, trainer.accumulate_grad_batches)))
        return per_epoch, max(1, total)

    def configure_optimizers(self):
        optimizer = build_optimizer(self, **self.optimizer_args)
        if not self.scheduler_args:
            return optimizer
        steps_per_epoch, total_steps = self._steps_per_epoch()
        scheduler = build_scheduler(optimizer, steps_per_epoch, total_steps, **self.scheduler_args)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["Task"]
