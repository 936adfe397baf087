"""Backbones: UniRepLKNet (with structural re-parameterization) and the Table 13 baselines."""

from core.backbones.factory import (
    BASELINES,
    backbone_kernel_sizes,
    create_backbone,
    declared_kernel_size,
    list_backbones,
    reparameterize,
)
from core.backbones.dense import DenseUniRepLKNet, create_dense_unireplknet
from core.backbones.unireplknet import (
    SUPPORTED_KERNELS,
    VARIANTS,
    DilatedReparamBlock,
    UniRepLKNet,
    UniRepLKNetBlock,
    default_kernel_sizes,
    stage_kernel_sizes,
)

__all__ = [
    "BASELINES",
    "SUPPORTED_KERNELS",
    "VARIANTS",
    "DenseUniRepLKNet",
    "DilatedReparamBlock",
    "UniRepLKNet",
    "UniRepLKNetBlock",
    "backbone_kernel_sizes",
    "create_backbone",
    "create_dense_unireplknet",
    "declared_kernel_size",
    "default_kernel_sizes",
    "list_backbones",
    "reparameterize",
    "stage_kernel_sizes",
]
