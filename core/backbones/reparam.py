"""Pure functions of structural re-parameterization: equivalent kernels and biases.

Modules call these to compute what their fused (deploy) form holds, then swap themselves; keeping
the arithmetic here, free of module surgery, makes each step testable on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fuse_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that follows a conv into the conv.

    W' = W * g / s and b' = beta + (b - mu) * g / s with s = sqrt(var + eps), per output channel.
    """
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    if bias is None:
        bias = torch.zeros_like(bn.running_mean)
    fused_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    fused_bias = bn.bias + (bias - bn.running_mean) * scale
    return fused_weight, fused_bias


def dilate_kernel(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """Turn a depthwise kernel applied with dilation r into the equal non-dilated sparse kernel.

    A (C, 1, k, k) kernel becomes (C, 1, (k-1)r+1, (k-1)r+1) with r-1 zeros between taps. A transposed conv
    with a single unit tap and stride r does exactly this insertion.
    """
    if dilation == 1:
        return kernel
    unit = torch.ones(1, 1, 1, 1, dtype=kernel.dtype, device=kernel.device)
    return F.conv_transpose2d(kernel, unit, stride=dilation)


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a square kernel symmetrically to size x size (both sizes odd)."""
    pad = (size - kernel.shape[-1]) // 2
    if pad < 0:
        raise ValueError(f"kernel of size {kernel.shape[-1]} does not fit in {size}")
    return F.pad(kernel, [pad] * 4)


def merge_dilated_branches(
    main: tuple[torch.Tensor, torch.Tensor],
    branches: list[tuple[torch.Tensor, torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum a K x K main kernel and dilated (kernel, bias, dilation) branches into one K x K kernel and bias."""
    weight, bias = main
    size = weight.shape[-1]
    weight, bias = weight.clone(), bias.clone()
    for branch_weight, branch_bias, dilation in branches:
        weight = weight + pad_kernel(dilate_kernel(branch_weight, dilation), size)
        bias = bias + branch_bias
    return weight, bias


def fold_ffn_output(
    linear_weight: torch.Tensor,
    grn_beta: torch.Tensor | None,
    bn: nn.BatchNorm2d,
    layer_scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold GRN's beta, the bias-free output Linear, the BN after it and the layer scale into one Linear.

    y = gamma * BN(W (z + beta)) = W' z + b' with W' = (gamma g / s) W and
    b' = gamma ((W beta - mu) g / s + bn_bias).
    """
    pre_bias = linear_weight @ grn_beta.reshape(-1) if grn_beta is not None else None
    weight, bias = fuse_bn(linear_weight, pre_bias, bn)
    if layer_scale is not None:
        weight = weight * layer_scale.reshape(-1, 1)
        bias = bias * layer_scale
    return weight, bias
