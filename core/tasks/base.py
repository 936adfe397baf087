"""What every task shares: the adapter and backbone built from plain values (optionally started from a checkpoint
file, ``backbone.init_from``), optimizer and per-step schedule, ``reparameterize`` and the deploy weights (save,
load, equality check).

A task subclass builds its own head and metrics and declares its steps; modality-specific behaviour reaches it
through its configuration (e.g. which mixup to apply) and through the adapter (how many views it made of each
sample, ``adapter.num_views``), never by guessing from tensor shapes.
"""

from __future__ import annotations

import inspect
import logging
import math
import os

import lightning as L
import torch
from torch import nn

from core import create_backbone, reparameterize
from core.checkpoint import CheckpointError, load_state, read_state_dict
from core.tasks.builders import build_adapter, check_backbone_spec
from core.tasks.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

# where a task's state dict keeps its backbone: ClassificationTask and SegmentationTask ``backbone.``,
# ForecastingTask ``model.backbone.``, DetectionTask ``detector.backbone.body.``
TASK_BACKBONE_PREFIXES = ("backbone.", "model.backbone.", "detector.backbone.body.")


def backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's own keys of a checkpoint's state dict.

    A task's state dict (a Lightning ``.ckpt``'s ``state_dict``, a ``deploy.pt`` of ``Task.save_deploy``) keeps
    the backbone under ``backbone.`` or ``model.backbone.``: those keys are returned without the prefix, the rest
    (adapter, forecaster, metrics) is left out. Any other state dict (a bare backbone's, a published file's) is
    returned as it is.
    """
    for prefix in TASK_BACKBONE_PREFIXES:
        if any(key.startswith(prefix) for key in state):
            return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return state


def init_backbone(backbone: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``backbone`` (in place) from the checkpoint file ``path``, weights only, and return it.

    Accepted: a plain or wrapped state dict (published weights, ``{"model" | "state_dict" | "model_ema": ...}``),
    a Lightning ``.ckpt`` or a ``deploy.pt`` of this project (the backbone's keys are taken from the task's). The
    stem is adapted to the backbone's ``in_chans``; a head of another class count is dropped (logged) and the
    backbone keeps its fresh one, as it does when the file has no head; a headless backbone (``num_classes=0``)
    ignores the file's head. Anything else loads strictly: missing, unexpected or mismatched keys raise
    ``CheckpointError`` naming them. A training-structure backbone cannot start from a deploy-structure
    (re-parameterized) file: that raises too (build it with ``deploy=True`` to fine-tune that structure).
    """
    state = backbone_state(read_state_dict(path))  # FileNotFoundError naming the file when it is missing
    expected = backbone.state_dict()
    reparameterizable = callable(getattr(backbone, "reparameterize", None))
    if (reparameterizable and any(k.endswith("running_mean") for k in expected)
            and state and not any(k.endswith("running_mean") for k in state)):
        raise CheckpointError(
            f"init_from {path} holds a deploy-structure (re-parameterized) {type(backbone).__name__}: its batch "
            "norms and parallel branches are fused, so the training structure cannot be rebuilt from it. Start "
            "from a training-structure file (a run's best.ckpt / last.ckpt, published weights), or fine-tune "
            "the deploy structure itself (backbone.deploy=true, UniRepLKNet only)."
        )
    skip_head = False
    if "head.weight" in state:
        if "head.weight" not in expected:
            log.info("init_from %s: the file's head (%d classes) is ignored: the backbone has none (num_classes=0)",
                     path, state["head.weight"].shape[0])
        elif state["head.weight"].shape != expected["head.weight"].shape:
            log.warning("init_from %s: the file's head has %d classes, the task %d: the head is dropped and "
                        "starts fresh", path, state["head.weight"].shape[0], expected["head.weight"].shape[0])
            skip_head = True
    elif "head.weight" in expected and not any(k.startswith("head.") for k in state):
        log.warning("init_from %s: the file has no head (a headless backbone's): the task's %d-class head starts "
                    "fresh", path, expected["head.weight"].shape[0])
        skip_head = True
    load_state(backbone, state, strict=True, skip_head=skip_head, source=path)
    log.info("backbone %s initialized from %s", type(backbone).__name__, path)
    return backbone


class Task(L.LightningModule):
    """Base of the tasks (``ClassificationTask``, ``ForecastingTask``).

    Args:
        optimizer: ``core.tasks.optim.build_optimizer`` arguments (name, lr, weight_decay, betas ...).
        scheduler: ``core.tasks.optim.lr_multiplier`` arguments (name, warmup_epochs ...); None: constant LR.

    The backbone spec may name a checkpoint file to start from, ``backbone["init_from"]`` (see
    ``init_backbone``). It is a starting point, not part of the model: the hyper-parameters a task saves (in its
    checkpoints, ``deploy.pt`` and loggers) leave it out, so ``load_from_checkpoint`` / ``load_deploy`` rebuild
    the task without that file (the weights come from the checkpoint). The run's ``config.yaml`` records it, and
    the task keeps it as ``self.init_from``.
    """

    def __init__(self, optimizer: dict | None = None, scheduler: dict | None = None):
        super().__init__()
        self.optimizer_args = dict(optimizer or {})
        self.scheduler_args = dict(scheduler) if scheduler else None
        self.deployed = False
        self.init_from: str | None = None

    def save_hyperparameters(self, *args, ignore=None, frame=None, logger: bool = True) -> None:
        """Lightning's, less ``backbone["init_from"]`` (kept as ``self.init_from``): see the class docstring."""
        if frame is None:
            frame = inspect.currentframe().f_back
        super().save_hyperparameters(*args, ignore=ignore, frame=frame, logger=logger)
        for hparams in (self._hparams, getattr(self, "_hparams_initial", None)):
            spec = hparams.get("backbone") if hparams is not None else None
            if isinstance(spec, dict) and "init_from" in spec:
                spec = dict(spec)  # never edit the caller's dict
                init_from = spec.pop("init_from")
                hparams["backbone"] = spec
                if init_from is not None:
                    self.init_from = str(init_from)

    @staticmethod
    def build_adapter_and_backbone(adapter: dict, backbone: dict, num_classes: int) -> tuple[nn.Module, nn.Module]:
        """The adapter, and the backbone whose ``in_chans`` is the adapter's ``out_chans`` (C').

        ``backbone["init_from"]`` (a checkpoint file; None or absent: random initialization) is loaded into the
        backbone by ``init_backbone``.
        """
        backbone = dict(backbone)
        init_from = backbone.pop("init_from", None)
        name, kwargs = check_backbone_spec(backbone)
        adapter_module = build_adapter(adapter)
        module = create_backbone(name, in_chans=adapter_module.out_chans, num_classes=num_classes, **kwargs)
        if init_from is not None:
            init_backbone(module, init_from)
        return adapter_module, module

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


__all__ = ["Task", "backbone_state", "init_backbone"]
