"""core: the shared UniRepLKNet backbone, the baselines behind one factory, and the training tasks.

``import core`` registers ``unireplknet_a`` ... ``unireplknet_xl`` (and ``unireplknet_test``) in timm.
The core knows no modality and never imports Hydra; tasks live in ``core.tasks`` (imported on demand).
"""

from core.backbones import (
    SUPPORTED_KERNELS,
    DenseUniRepLKNet,
    DilatedReparamBlock,
    UniRepLKNet,
    UniRepLKNetBlock,
    backbone_kernel_sizes,
    create_backbone,
    default_kernel_sizes,
    list_backbones,
    reparameterize,
)
from core.backbones.fast import optimize_for_inference
from core.checkpoint import CheckpointError, load_checkpoint, read_state_dict

__all__ = [
    "SUPPORTED_KERNELS",
    "CheckpointError",
    "DenseUniRepLKNet",
    "DilatedReparamBlock",
    "UniRepLKNet",
    "UniRepLKNetBlock",
    "backbone_kernel_sizes",
    "create_backbone",
    "default_kernel_sizes",
    "list_backbones",
    "load_checkpoint",
    "optimize_for_inference",
    "read_state_dict",
    "reparameterize",
]
