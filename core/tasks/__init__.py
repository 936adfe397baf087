"""Lightning tasks built from plain config values (no Hydra, no modality imports).

``Task`` is their shared base (optimizer and schedule, reparameterize, deploy weights); ``ClassificationTask``
serves every classification modality, ``ForecastingTask`` the forecasting ones, ``SegmentationTask`` dense
per-pixel classification, ``DetectionTask`` boxes and instance masks. Adapters, models, metrics and
test-time augmentations come in as ``{"_target_": import path, **arguments}``.
"""

from core.tasks.base import Task
from core.tasks.builders import build_adapter, import_object, instantiate, to_plain
from core.tasks.classification import ClassificationTask
from core.tasks.detection import DetectionTask
from core.tasks.forecasting import ForecastingTask
from core.tasks.segmentation import SegmentationTask
from core.tasks.optim import build_optimizer, build_scheduler, count_parameters, lr_multiplier, param_groups

__all__ = [
    "ClassificationTask",
    "DetectionTask",
    "ForecastingTask",
    "SegmentationTask",
    "Task",
    "build_adapter",
    "build_optimizer",
    "build_scheduler",
    "count_parameters",
    "import_object",
    "instantiate",
    "lr_multiplier",
    "param_groups",
    "to_plain",
]
