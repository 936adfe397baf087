"""Classification task: adapter -> backbone (with its linear head), trained with the paper's recipes.

Used by every classification modality (image, audio, video, point cloud). Built only from plain values,
so ``ClassificationTask.load_from_checkpoint(path)`` works anywhere, without Hydra:

- loss ``ce`` (softmax cross-entropy) or ``bce`` (sigmoid BCE on one-hot / mixed labels, the AST audio recipe),
  label smoothing, timm's mixup / cutmix on the raw input batch;
- targets are int64 class indices or float B x num_classes soft labels (modalities that mix in the data
  pipeline); accuracy then uses the argmax of the soft label;
- top-1 / top-5 accuracy through torchmetrics, logged as ``val/acc``, ``val/acc5``, ``test/acc`` ...; after
  ``reparameterize()`` the test metrics are logged with a ``_deploy`` suffix (``test/acc_deploy``);
- multi-view evaluation: an adapter may turn each input sample into V maps (sample-major, e.g. a video's
  clips x crops); ``forward`` then averages the softmax over the V views (``average_views``);
- extra metrics by import path (``metrics``, e.g. the mean per-class accuracy ``macc``) logged beside acc, and
  test-time augmentation by import path (``test_time_augmentation``, e.g. point-cloud rotation voting): the
  test loop averages the logits over the augmented copies of each batch;
- AdamW / Adam without weight decay on 1-D parameters and biases; cosine (with warmup) or step schedules.
"""

from __future__ import annotations

import math
import os

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from timm.data import Mixup
from torchmetrics.classification import MulticlassAccuracy

from core import create_backbone, reparameterize
from core.tasks.builders import build_adapter, import_object, to_plain
from core.tasks.optim import build_optimizer, build_scheduler

LOSSES = ("ce", "bce")


def average_views(logits: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B V) x K logits of V views per sample (sample-major) -> B x K log of the view-averaged softmax.

    The log-probabilities are valid logits: their softmax is the averaged probability, their argmax its argmax,
    and cross-entropy on them is the NLL of the averaged prediction. One view per sample passes through unchanged.
    """
    if batch_size == 0 or len(logits) == batch_size:
        return logits
    if len(logits) % batch_size:
        raise ValueError(f"the adapter made {len(logits)} maps for {batch_size} samples: not a whole number of views")
    probs = logits.float().softmax(dim=-1).view(batch_size, len(logits) // batch_size, -1).mean(dim=1)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


class ClassificationTask(L.LightningModule):
    """Adapter + backbone classifier.

    Args:
        num_classes: number of classes (the backbone's head size).
        backbone: ``{"name": <core.list_backbones() name>, **create_backbone keyword arguments}``.
        adapter: ``{"class_path": "modalities.<m>.adapter.<Class>", "init_args": {...}}``; its ``out_chans``
            becomes the backbone's ``in_chans``.
        loss: ``"ce"`` or ``"bce"``.
        label_smoothing: epsilon for int targets (folded into the mixed targets when mixup is on).
        mixup: keyword arguments of ``timm.data.Mixup`` (mixup_alpha, cutmix_alpha, prob, switch_prob,
            mode); None or both alphas 0 disables it. Applied to int-labelled, image-like (B x C x H x W)
            inputs only.
        optimizer: ``core.tasks.optim.build_optimizer`` arguments (name, lr, weight_decay, betas ...).
        scheduler: ``core.tasks.optim.lr_multiplier`` arguments (name, warmup_epochs ...); None: constant LR.
        top_k: the second accuracy reported (``acc5`` for 5), when there are more than top_k classes.
        metrics: extra metrics, ``{name: {"class_path": ..., "init_args": {...}}}``: torchmetrics classification
            metrics built with ``num_classes`` and updated with (logits, labels), logged as ``val/<name>`` and
            ``test/<name>``; e.g. ``macc``: ``torchmetrics.classification.MulticlassAccuracy`` with
            ``average: macro`` (mean per-class accuracy).
        test_time_augmentation: ``{"class_path": ..., "init_args": {...}}`` of a callable turning an input batch
            into a list of augmented batches; the test loop (not validation) averages the logits over them.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: dict,
        adapter: dict,
        loss: str = "ce",
        label_smoothing: float = 0.0,
        mixup: dict | None = None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        top_k: int = 5,
        metrics: dict | None = None,
        test_time_augmentation: dict | None = None,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid choices: {', '.join(LOSSES)}")
        backbone, adapter = to_plain(backbone), to_plain(adapter)
        mixup, optimizer, scheduler = to_plain(mixup), to_plain(optimizer), to_plain(scheduler)
        metrics, test_time_augmentation = to_plain(metrics), to_plain(test_time_augmentation)
        self.save_hyperparameters(
            {
                "num_classes": num_classes, "backbone": backbone, "adapter": adapter, "loss": loss,
                "label_smoothing": label_smoothing, "mixup": mixup, "optimizer": optimizer,
                "scheduler": scheduler, "top_k": top_k, "metrics": metrics,
                "test_time_augmentation": test_time_augmentation,
            }
        )
        reserved = {"in_chans", "num_classes"} & set(backbone)
        if "name" not in backbone or reserved:
            raise ValueError(f"backbone needs 'name' and may not set {sorted(reserved)} (the task sets them)")
        self.adapter = build_adapter(adapter)
        backbone_kwargs = {key: value for key, value in backbone.items() if key != "name"}
        self.backbone = create_backbone(
            backbone["name"], in_chans=self.adapter.out_chans, num_classes=num_classes, **backbone_kwargs
        )
        self.num_classes = num_classes
        self.loss_name = loss
        self.label_smoothing = label_smoothing
        self.optimizer_args = dict(optimizer or {})
        self.scheduler_args = dict(scheduler) if scheduler else None
        self.mixup = self._build_mixup(mixup, label_smoothing, num_classes)
        self.deployed = False

        self.top_k = top_k if num_classes > top_k else None
        self.val_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        if self.top_k:
            self.val_acc_k = MulticlassAccuracy(num_classes, top_k=self.top_k, average="micro")
            self.test_acc_k = MulticlassAccuracy(num_classes, top_k=self.top_k, average="micro")
        self.val_metrics = nn.ModuleDict(self._build_metrics(metrics, num_classes))
        self.test_metrics = nn.ModuleDict(self._build_metrics(metrics, num_classes))
        self.test_time_augmentation = self._build_object(test_time_augmentation) if test_time_augmentation else None

    @staticmethod
    def _build_object(spec: dict, **kwargs):
        if "class_path" not in spec or set(spec) - {"class_path", "init_args"}:
            raise ValueError(f"expected {{'class_path': ..., 'init_args': {{...}}}}, got keys {sorted(spec)}")
        return import_object(spec["class_path"])(**kwargs, **dict(spec.get("init_args") or {}))

    @classmethod
    def _build_metrics(cls, metrics: dict | None, num_classes: int) -> dict:
        return {name: cls._build_object(spec, num_classes=num_classes) for name, spec in (metrics or {}).items()}

    @staticmethod
    def _build_mixup(mixup: dict | None, label_smoothing: float, num_classes: int) -> Mixup | None:
        if not mixup or not (mixup.get("mixup_alpha", 0) or mixup.get("cutmix_alpha", 0)):
            return None
        return Mixup(label_smoothing=label_smoothing, num_classes=num_classes, **mixup)

    # --- model ---------------------------------------------------------------------------------------

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Raw modality batch -> B x num_classes logits (views averaged when the adapter made several per sample)."""
        logits = self.backbone(self.adapter(inputs))
        return average_views(logits, len(inputs)) if isinstance(inputs, torch.Tensor) else logits

    def reparameterize(self) -> "ClassificationTask":
        """Switch the backbone to its deploy structure (in place, idempotent); call in eval mode.

        Afterwards the test metrics are logged as ``test/<name>_deploy``.
        """
        reparameterize(self)
        self.deployed = True
        return self

    @classmethod
    def load_deploy(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "ClassificationTask":
        """Rebuild a task from deploy weights saved by the harness (``{"hyper_parameters", "state_dict"}``)."""
        payload = torch.load(path, map_location=map_location, weights_only=True)
        task = cls(**payload["hyper_parameters"]).eval().reparameterize()
        task.load_state_dict(payload["state_dict"])
        return task

    # --- losses --------------------------------------------------------------------------------------

    def _soft_targets(self, target: torch.Tensor, smoothing: float) -> torch.Tensor:
        if target.is_floating_point():
            return target
        off = smoothing / self.num_classes
        return F.one_hot(target, self.num_classes).to(torch.float32) * (1.0 - smoothing) + off

    def compute_loss(self, logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        """CE or BCE for int targets (with label smoothing) and for soft targets."""
        logits = logits.float()
        if self.loss_name == "ce":
            if not target.is_floating_point():
                return F.cross_entropy(logits, target, label_smoothing=smoothing)
            return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.binary_cross_entropy_with_logits(logits, self._soft_targets(target, smoothing))

    # --- steps ---------------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx: int):
        inputs, target = batch
        if len(target) == 0:  # every sample of the batch was unreadable
            return None
        if self.mixup is not None and not target.is_floating_point() and inputs.dim() == 4:
            if len(target) % 2:  # timm pairs samples: it needs an even batch
                inputs, target = inputs[:-1], target[:-1]
            if len(target) == 0:
                return None
            inputs, target = self.mixup(inputs, target)
        logits = self(inputs)
        loss = self.compute_loss(logits, target, self.label_smoothing)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(target))
        return loss

    def _evaluate(self, batch, stage: str, acc, acc_k, metrics: nn.ModuleDict | None = None) -> None:
        inputs, target = batch
        if len(target) == 0:
            return
        if stage == "test" and self.test_time_augmentation is not None:
            logits = torch.stack([self(view) for view in self.test_time_augmentation(inputs)]).mean(dim=0)
        else:
            logits = self(inputs)
        loss = self.compute_loss(logits, target)
        labels = target.argmax(dim=-1) if target.is_floating_point() else target
        suffix = "_deploy" if stage == "test" and self.deployed else ""
        acc(logits, labels)
        self.log(f"{stage}/loss{suffix}", loss, on_epoch=True, sync_dist=True, batch_size=len(target))
        self.log(f"{stage}/acc{suffix}", acc, on_epoch=True, prog_bar=True, batch_size=len(target))
        if acc_k is not None:
            acc_k(logits, labels)
            self.log(f"{stage}/acc{self.top_k}{suffix}", acc_k, on_epoch=True, batch_size=len(target))
        for name, metric in (metrics or {}).items():
            metric(logits, labels)
            self.log(f"{stage}/{name}{suffix}", metric, on_epoch=True, batch_size=len(target))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc, self.val_acc_k if self.top_k else None, self.val_metrics)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc, self.test_acc_k if self.top_k else None, self.test_metrics)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(inputs).softmax(dim=-1)

    # --- optimization --------------------------------------------------------------------------------

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
