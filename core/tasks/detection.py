"""Object detection and instance segmentation task: dense backbone -> FPN -> torchvision's Mask R-CNN (Table 7).

- The backbone is ``core.create_backbone(name, dense=True)`` (UniRepLKNet's four stage maps through ``norm0..3``,
  the published COCO backbones' layout); torchvision's ``FeaturePyramidNetwork`` (with a max-pooled fifth level)
  turns them into the pyramid its ``MaskRCNN`` / ``FasterRCNN`` take, whose transform batches, resizes (shorter
  side ``min_size``, a random one of a tuple per training image: multi-scale training; longer side at most
  ``max_size``) and normalizes the image list. Heads, anchors and sampling are torchvision's, sized by the
  arguments below. The paper's head is Cascade Mask R-CNN, which torchvision does not provide: this is the
  single-stage-refinement Mask R-CNN of the same family.
- Metrics: COCO mAP through torchmetrics' ``MeanAveragePrecision`` (pycocotools backend, crowd regions
  ignored), logged as ``val/map``, ``val/map_50``, ``val/map_75`` (boxes) and ``val/mask_map``,
  ``val/mask_map_50`` (masks), and ``test/...`` (``_deploy`` after ``reparameterize()``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from core.tasks.base import Task
from core.tasks.builders import to_plain

IMAGE_MEAN, IMAGE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LOGGED = {"map": "map", "map_50": "map_50", "map_75": "map_75", "map_small": "map_small"}


class FPNBackbone(nn.Module):
    """A dense backbone's stage maps through an FPN: the ``OrderedDict`` of maps ('0'..'3', 'pool') and the
    ``out_channels`` a torchvision detector expects."""

    def __init__(self, body: nn.Module, channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.out_channels), channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(self.body(x))))


class DetectionTask(Task):
    """Adapter + dense backbone + FPN + Mask R-CNN (or Faster R-CNN with ``masks=False``).

    Args:
        num_classes: object classes (without the background).
        backbone: ``{"name": ..., **create_backbone arguments}`` (built with ``dense=True``).
        adapter: ``{"_target_": ..., **arguments}`` (checks the image list; ``out_chans`` = C').
        masks: predict instance masks (Mask R-CNN) as well as boxes.
        fpn_channels: FPN width (256 in the paper's detectors).
        anchor_sizes: one anchor size per pyramid level (5: strides 4-64); aspect_ratios: at every level.
        min_size: the shorter side the transform resizes to (a tuple: one drawn per training image; the last
            at test); max_size: the longest side allowed.
        representation_size: the box head's MLP width; mask_channels: the mask head's conv width.
        rpn_batch_size_per_image, box_batch_size_per_image: anchors / proposals sampled per image for the losses.
        box_detections_per_img: detections kept per image.
        detector_options: further keyword arguments of torchvision's ``MaskRCNN`` / ``FasterRCNN`` (e.g.
            ``rpn_pre_nms_top_n_train``, ``rpn_post_nms_top_n_test``, ``box_score_thresh``).
        optimizer, scheduler: see ``core.tasks.base.Task``.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: dict,
        adapter: dict,
        masks: bool = True,
        fpn_channels: int = 256,
        anchor_sizes: list[int] | tuple[int, ...] = (32, 64, 128, 256, 512),
        aspect_ratios: list[float] | tuple[float, ...] = (0.5, 1.0, 2.0),
        min_size: int | list[int] = 800,
        max_size: int = 1333,
        representation_size: int = 1024,
        mask_channels: int = 256,
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 512,
        box_detections_per_img: int = 100,
        detector_options: dict | None = None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
    ):
        super().__init__(to_plain(optimizer), to_plain(scheduler))
        backbone, adapter = to_plain(backbone), to_plain(adapter)
        anchor_sizes, aspect_ratios, min_size = to_plain(anchor_sizes), to_plain(aspect_ratios), to_plain(min_size)
        if len(anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per pyramid level (5: strides 4, 8, 16, 32, 64), "
                             f"got {anchor_sizes}")
        self.save_hyperparameters({
            "num_classes": num_classes, "backbone": backbone, "adapter": adapter, "masks": masks,
            "fpn_channels": fpn_channels, "anchor_sizes": anchor_sizes, "aspect_ratios": aspect_ratios,
            "min_size": min_size, "max_size": max_size, "representation_size": representation_size,
            "mask_channels": mask_channels, "rpn_batch_size_per_image": rpn_batch_size_per_image,
            "box_batch_size_per_image": box_batch_size_per_image, "box_detections_per_img": box_detections_per_img,
            "detector_options": to_plain(detector_options), "optimizer": to_plain(optimizer),
            "scheduler": to_plain(scheduler),
        })
        self.adapter, body = self.build_adapter_and_backbone(adapter, {**backbone, "dense": True}, 0)
        pyramid = FPNBackbone(body, fpn_channels)
        heads = dict(
            rpn_anchor_generator=AnchorGenerator(tuple((int(s),) for s in anchor_sizes),
                                                 (tuple(float(r) for r in aspect_ratios),) * len(anchor_sizes)),
            box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),
            box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
            min_size=tuple(min_size) if isinstance(min_size, list) else min_size, max_size=max_size,
            image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD),
            rpn_batch_size_per_image=rpn_batch_size_per_image, box_batch_size_per_image=box_batch_size_per_image,
            box_detections_per_img=box_detections_per_img, **(to_plain(detector_options) or {}),
        )
        if masks:
            self.detector = MaskRCNN(pyramid, num_classes=None,
                                     mask_head=MaskRCNNHeads(fpn_channels, [mask_channels] * 4, 1),
                                     mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes + 1),
                                     **heads)
        else:
            self.detector = FasterRCNN(pyramid, num_classes=None, **heads)
        self.num_classes, self.masks = num_classes, masks
        iou_type = ("bbox", "segm") if masks else "bbox"
        self.val_map = MeanAveragePrecision(iou_type=iou_type, backend="pycocotools")
        self.test_map = MeanAveragePrecision(iou_type=iou_type, backend="pycocotools")

    @property
    def backbone(self) -> nn.Module:
        """The dense backbone (inside the detector's FPN)."""
        return self.detector.backbone.body

    # --- model ---------------------------------------------------------------------------------------

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        """A list of 3 x H x W images in [0, 1] -> one dict per image: boxes (x1 y1 x2 y2, input pixels), labels
        (1..num_classes), scores and, with masks, masks (N x 1 x H x W probabilities)."""
        return self.detector(self.adapter(images))

    @torch.no_grad()
    def deploy_difference(self, trained: nn.Module, inputs) -> float:
        """Largest |difference| of the FPN maps of ``trained`` (the training structure) and this task on a batch
        (detections are thresholded, so the maps are what re-parameterization must keep)."""
        batch, _ = self.detector.transform(self.adapter(inputs))
        ours, theirs = self.detector.backbone(batch.tensors), trained.detector.backbone(batch.tensors)
        return max(float((ours[k] - theirs[k]).abs().max()) for k in ours)

    # --- steps ---------------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx: int):
        images, targets = batch
        if len(targets) == 0:  # every image of the batch was unreadable
            return None
        targets = [{k: v for k, v in t.items() if k in ("boxes", "labels", "masks")} for t in targets]
        losses = self.detector(self.adapter(images), targets)
        loss = sum(losses.values())
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=len(images))
        return loss

    def _update(self, batch, metric: MeanAveragePrecision) -> None:
        images, targets = batch
        if len(targets) == 0:
            return
        detections = self(images)
        preds, truth = [], []
        for det, target in zip(detections, targets):
            pred = {"boxes": det["boxes"], "scores": det["scores"], "labels": det["labels"]}
            want = {"boxes": target["boxes"], "labels": target["labels"], "iscrowd": target["iscrowd"]}
            if self.masks:
                pred["masks"] = det["masks"][:, 0] > 0.5
                want["masks"] = target["masks"].bool()
            preds.append(pred)
            truth.append(want)
        metric.update(preds, truth)

    def _log_map(self, stage: str, metric: MeanAveragePrecision) -> None:
        results = metric.compute()
        metric.reset()
        suffix = "_deploy" if stage == "test" and self.deployed else ""
        for key, name in LOGGED.items():
            box = results.get(f"bbox_{key}", results.get(key)) if self.masks else results.get(key)
            if box is not None:
                self.log(f"{stage}/{name}{suffix}", float(box), prog_bar=key == "map_50", sync_dist=False)
            if self.masks and key in ("map", "map_50") and f"segm_{key}" in results:
                self.log(f"{stage}/mask_{name}{suffix}", float(results[f"segm_{key}"]))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._update(batch, self.val_map)

    def on_validation_epoch_end(self) -> None:
        self._log_map("val", self.val_map)

    def test_step(self, batch, batch_idx: int) -> None:
        self._update(batch, self.test_map)

    def on_test_epoch_end(self) -> None:
        self._log_map("test", self.test_map)

    def predict_step(self, batch, batch_idx: int) -> list[dict]:
        images = batch[0] if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], list) else batch
        return self(images)
