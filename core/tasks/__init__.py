"""Lightning tasks built from plain config values (no Hydra, no modality imports).

``ClassificationTask`` serves every classification modality; its adapter comes in as an import path.
"""

from core.tasks.builders import build_adapter, import_object, to_plain
from core.tasks.classification import ClassificationTask
from core.tasks.optim import build_optimizer, build_scheduler, count_parameters, lr_multiplier, param_groups

__all__ = [
    "ClassificationTask",
    "build_adapter",
    "build_optimizer",
    "build_scheduler",
    "count_parameters",
    "import_object",
    "lr_multiplier",
    "param_groups",
    "to_plain",
]
