"""Classification task: adapter -> backbone (with its linear head), trained with the paper's recipes.

Used by every classification modality (image, audio, video, point cloud). Built only from plain values,
so ``ClassificationTask.load_from_checkpoint(path)`` works anywhere, without Hydra:

- loss ``ce`` (softmax cross-entropy) or ``bce`` (sigmoid BCE on one-hot / mixed labels, the AST audio recipe),
  label smoothing, timm's mixup / cutmix on the raw input batch;
- targets are int64 class indices or float B x num_classes soft labels (modalities that mix in the data
  pipeline); accuracy then uses the argmax of the soft label;
- top-1 / top-5 accuracy through torchmetrics, logged as ``val/acc``, ``val/acc5``, ``test/acc`` ...; after
  ``reparameterize()`` the test metrics are logged with a ``_deploy`` suffix (``test/acc_deploy``);
- multi-view evaluation: an adapter that turns each input sample into V maps (sample-major, e.g. a video's
  clips x crops) says so with ``adapter.num_views(inputs)``; ``forward`` then averages the softmax over the V
  views (``average_views``);
- extra metrics (``metrics``, e.g. the mean per-class accuracy ``macc``) logged beside acc, and test-time
  augmentation (``test_time_augmentation``, e.g. point-cloud rotation voting): the test loop averages the
  logits over the augmented copies of each batch; both in the ``_target_`` style;
- optimizer, schedule and the deploy structure: see ``core.tasks.base.Task``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from timm.data import Mixup
from torchmetrics.classification import MulticlassAccuracy

from core.tasks.base import Task
from core.tasks.builders import instantiate, to_plain

LOSSES = ("ce", "bce")


def average_views(logits: torch.Tensor, views: int) -> torch.Tensor:
    """(B V) x K logits of ``views`` = V views per sample (sample-major) -> B x K log of the view-averaged softmax.

    The log-probabilities are valid logits: their softmax is the averaged probability, their argmax its argmax,
    and cross-entropy on them is the NLL of the averaged prediction. One view per sample passes through unchanged.
    """
    if views == 1:
        return logits
    if views < 1 or len(logits) % views:
        raise ValueError(f"the adapter made {len(logits)} maps, not a whole number of {views} views per sample")
    probs = logits.float().softmax(dim=-1).view(len(logits) // views, views, -1).mean(dim=1)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


class ClassificationTask(Task):
    """Adapter + backbone classifier.

    Args:
        num_classes: number of classes (the backbone's head size).
        backbone: ``{"name": <core.list_backbones() name>, **create_backbone keyword arguments}``.
        adapter: ``{"_target_": "modalities.<m>.adapter.<Class>", **arguments}``; its ``out_chans`` becomes the
            backbone's ``in_chans``.
        loss: ``"ce"`` or ``"bce"``.
        label_smoothing: epsilon for int targets (folded into the mixed targets when mixup is on).
        mixup: keyword arguments of ``timm.data.Mixup`` (mixup_alpha, cutmix_alpha, prob, switch_prob,
            mode); None or both alphas 0 disables it. Applied to int-labelled B x C x H x W input batches: the
            modalities that mix elsewhere (in their data pipeline) leave it None.
        optimizer: ``core.tasks.optim.build_optimizer`` arguments (name, lr, weight_decay, betas ...).
        scheduler: ``core.tasks.optim.lr_multiplier`` arguments (name, warmup_epochs ...); None: constant LR.
        top_k: the second accuracy reported (``acc5`` for 5), when there are more than top_k classes.
        metrics: extra metrics, ``{name: {"_target_": ..., **arguments}}``: torchmetrics classification metrics
            built with ``num_classes`` and updated with (logits, labels), logged as ``val/<name>`` and
            ``test/<name>``; e.g. ``macc``: ``torchmetrics.classification.MulticlassAccuracy`` with
            ``average: macro`` (mean per-class accuracy).
        test_time_augmentation: ``{"_target_": ..., **arguments}`` of a callable turning an input batch into a
            list of augmented batches; the test loop (not validation) averages the logits over them.
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
        super().__init__(to_plain(optimizer), to_plain(scheduler))
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
        self.adapter, self.backbone = self.build_adapter_and_backbone(adapter, backbone, num_classes)
        self.num_classes = num_classes
        self.loss_name = loss
        self.label_smoothing = label_smoothing
        self.mixup = self._build_mixup(mixup, label_smoothing, num_classes)

        self.top_k = top_k if num_classes > top_k else None
        self.val_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        if self.top_k:
            self.val_acc_k = MulticlassAccuracy(num_classes, top_k=self.top_k, average="micro")
            self.test_acc_k = MulticlassAccuracy(num_classes, top_k=self.top_k, average="micro")
        self.val_metrics = nn.ModuleDict(self._build_metrics(metrics, num_classes))
        self.test_metrics = nn.ModuleDict(self._build_metrics(metrics, num_classes))
        self.test_time_augmentation = instantiate(test_time_augmentation) if test_time_augmentation else None

    @staticmethod
    def _build_metrics(metrics: dict | None, num_classes: int) -> dict:
        return {name: instantiate(spec, num_classes=num_classes) for name, spec in (metrics or {}).items()}

    @staticmethod
    def _build_mixup(mixup: dict | None, label_smoothing: float, num_classes: int) -> Mixup | None:
        if not mixup or not (mixup.get("mixup_alpha", 0) or mixup.get("cutmix_alpha", 0)):
            return None
        return Mixup(label_smoothing=label_smoothing, num_classes=num_classes, **mixup)

    # --- model ---------------------------------------------------------------------------------------

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Raw modality batch -> B x num_classes logits (views averaged when the adapter made several per sample)."""
        logits = self.backbone(self.adapter(inputs))
        num_views = getattr(self.adapter, "num_views", None)
        return average_views(logits, num_views(inputs)) if num_views is not None else logits

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
        if self.mixup is not None and not target.is_floating_point():
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
