"""Semantic segmentation task: adapter -> dense backbone -> UPerNet -> per-pixel class logits (paper Table 8).

- The backbone is ``core.create_backbone(name, dense=True)``: UniRepLKNet's four stage maps (strides 4-32), each
  through its LayerNorm ``norm0..3`` as in the published ADE20K models.
- UPerNet (a pyramid pooling module on the stride-32 map, an FPN over the four maps, fused at stride 4) is
  segmentation_models_pytorch's ``UPerNetDecoder``; its own per-level LayerNorms are replaced by identities for
  UniRepLKNet, whose ``norm0..3`` already normalize each map (they stay for a baseline's raw maps). The
  classifier (dropout + 1x1 conv) and the optional auxiliary FCN head on the stride-16 map (the mmseg recipe the
  paper uses, loss weight 0.4) are a few layers written here.
- Loss: cross-entropy with ``ignore_index`` (255: ADE20K's "other" after its labels are shifted by one).
- Metrics (torchmetrics): mIoU (``MulticlassJaccardIndex``, macro over the classes present) and pixel accuracy,
  computed at the label map's own size (logits are resized to it), logged as ``val/miou``, ``val/acc``,
  ``test/miou`` ... (``_deploy`` after ``reparameterize()``).
- Inference: the whole image, or sliding windows (``test_mode="slide"``, ``crop_size`` / ``stride``: the logits
  of overlapping windows are averaged), as mmseg's two test modes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from core.backbones.dense import DenseUniRepLKNet
from core.tasks.base import Task
from core.tasks.builders import to_plain

TEST_MODES = ("whole", "slide")


def fcn_head(in_channels: int, channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The auxiliary head: conv 3x3 + BN + ReLU, dropout, 1x1 classifier (mmseg's FCNHead with one conv)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1),
    )


def slide_windows(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of ``crop`` covering ``size`` with steps of at most ``stride`` (last one flush)."""
    if size <= crop:
        return [0]
    count = math.ceil((size - crop) / stride) + 1
    return sorted({min(i * stride, size - crop) for i in range(count)})


class SegmentationTask(Task):
    """Adapter + dense backbone + UPerNet.

    Args:
        num_classes: classes scored (ADE20K: 150; label ``ignore_index`` is not scored).
        backbone: ``{"name": ..., **create_backbone arguments}`` (built with ``dense=True``).
        adapter: ``{"_target_": ..., **arguments}``; its ``out_chans`` is the backbone's ``in_chans``.
        decoder_channels: UPerNet width (the paper's mmseg UPerNet: 512).
        aux_weight: weight of the auxiliary FCN head's loss (0 or None: no auxiliary head).
        dropout: dropout before the classifiers.
        ignore_index: the label that is never scored.
        test_mode: ``"whole"`` or ``"slide"`` (windows of ``crop_size`` every ``stride`` px, both [h, w] or int).
        optimizer, scheduler: see ``core.tasks.base.Task``.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: dict,
        adapter: dict,
        decoder_channels: int = 512,
        aux_weight: float | None = 0.4,
        dropout: float = 0.1,
        ignore_index: int = 255,
        test_mode: str = "whole",
        crop_size: int | list[int] | None = None,
        stride: int | list[int] | None = None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
    ):
        super().__init__(to_plain(optimizer), to_plain(scheduler))
        backbone, adapter = to_plain(backbone), to_plain(adapter)
        if test_mode not in TEST_MODES:
            raise ValueError(f"unknown test_mode {test_mode!r}; valid choices: {', '.join(TEST_MODES)}")
        if test_mode == "slide" and (crop_size is None or stride is None):
            raise ValueError("test_mode='slide' needs crop_size and stride (e.g. 512 and 341, mmseg's ADE20K values)")
        self.save_hyperparameters({
            "num_classes": num_classes, "backbone": backbone, "adapter": adapter,
            "decoder_channels": decoder_channels, "aux_weight": aux_weight, "dropout": dropout,
            "ignore_index": ignore_index, "test_mode": test_mode, "crop_size": to_plain(crop_size),
            "stride": to_plain(stride), "optimizer": to_plain(optimizer), "scheduler": to_plain(scheduler),
        })
        self.adapter, self.backbone = self.build_adapter_and_backbone(adapter, {**backbone, "dense": True}, 0)
        channels = list(self.backbone.out_channels)
        if len(channels) != 4:
            raise ValueError(f"UPerNet takes the four stage maps; the backbone returns {len(channels)}")
        # smp's decoder skips the first two entries of encoder_channels (the stride-1 and -2 maps of its encoders)
        self.decoder = UPerNetDecoder([self.adapter.out_chans, 0, *channels], encoder_depth=5,
                                      decoder_channels=decoder_channels)
        if isinstance(self.backbone, DenseUniRepLKNet):
            self.decoder.feature_norms = nn.ModuleList(nn.Identity() for _ in channels)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(decoder_channels, num_classes, 1))
        self.aux_weight = float(aux_weight or 0.0)
        self.aux_head = fcn_head(channels[2], decoder_channels // 2, num_classes, dropout) if self.aux_weight else None
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.test_mode = test_mode
        self.crop_size = self._pair(crop_size)
        self.stride = self._pair(stride)
        for stage in ("val", "test"):
            setattr(self, f"{stage}_miou", MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index))
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index))

    @staticmethod
    def _pair(value) -> tuple[int, int] | None:
        if value is None:
            return None
        return (int(value), int(value)) if isinstance(value, (int, float)) else (int(value[0]), int(value[1]))

    # --- model ---------------------------------------------------------------------------------------

    def _logits(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Input batch -> (B x K x H x W logits at the input size, the auxiliary head's or None)."""
        x = self.adapter(inputs)
        maps = self.backbone(x)
        logits = self.classifier(self.decoder([x, x, *maps]))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        aux = None
        if self.aux_head is not None and self.training:
            aux = F.interpolate(self.aux_head(maps[2]), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, aux

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """B x C x H x W -> B x num_classes x H x W logits (the whole image)."""
        return self._logits(inputs)[0]

    @torch.no_grad()
    def slide_inference(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits averaged over windows of ``crop_size`` every ``stride`` px (mmseg's slide mode)."""
        (ch, cw), (sh, sw) = self.crop_size, self.stride
        b, _, h, w = inputs.shape
        total = inputs.new_zeros(b, self.num_classes, h, w)
        count = inputs.new_zeros(1, 1, h, w)
        for top in slide_windows(h, ch, sh):
            for left in slide_windows(w, cw, sw):
                window = inputs[..., top:top + ch, left:left + cw]
                total[..., top:top + ch, left:left + cw] += self(window)
                count[..., top:top + ch, left:left + cw] += 1
        return total / count

    def predict_logits(self, inputs: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Test-mode logits, resized to ``size`` (the label map's) when given."""
        logits = self.slide_inference(inputs) if self.test_mode == "slide" else self(inputs)
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    # --- steps ---------------------------------------------------------------------------------------

    def compute_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index)

    def training_step(self, batch, batch_idx: int):
        inputs, target = batch
        if len(target) == 0:  # every sample of the batch was unreadable
            return None
        logits, aux = self._logits(inputs)
        loss = self.compute_loss(logits, target)
        if aux is not None:
            loss = loss + self.aux_weight * self.compute_loss(aux, target)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(target))
        return loss

    def _evaluate(self, batch, stage: str) -> None:
        inputs, target = batch
        if len(target) == 0:
            return
        logits = self.predict_logits(inputs, tuple(target.shape[-2:]))
        suffix = "_deploy" if stage == "test" and self.deployed else ""
        miou, acc = getattr(self, f"{stage}_miou"), getattr(self, f"{stage}_acc")
        preds = logits.argmax(dim=1)
        miou(preds, target)
        acc(preds, target)
        self.log(f"{stage}/loss{suffix}", self.compute_loss(logits, target), on_epoch=True, sync_dist=True,
                 batch_size=len(target))
        self.log(f"{stage}/miou{suffix}", miou, on_epoch=True, prog_bar=True, batch_size=len(target))
        self.log(f"{stage}/acc{suffix}", acc, on_epoch=True, batch_size=len(target))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predict_logits(inputs).argmax(dim=1)
