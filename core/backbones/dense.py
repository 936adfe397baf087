"""UniRepLKNet as the backbone of dense-prediction heads (detection, segmentation).

``DenseUniRepLKNet`` is the classification model without its pooled ``norm`` and ``head``: it returns the four
stage outputs at strides 4, 8, 16 and 32, each through its own channels-first LayerNorm ``norm0`` ... ``norm3``.
That is the structure, and the key layout, of the backbones of the published COCO / ADE20K models, so their
checkpoints load strict (the ``backbone.`` prefix of a detector's or segmentor's state dict and the keys of its
neck and heads are set aside); an ImageNet classification checkpoint loads too, its ``norm`` / ``head`` dropped
and the stage norms left at their initialization (ones and zeros), which the loader says by name.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from timm.layers import LayerNorm2d

from core.backbones.unireplknet import VARIANTS, UniRepLKNet, default_kernel_sizes, layout_kernel_sizes, override_kernel_size

BACKBONE_PREFIX = "backbone."


class DenseUniRepLKNet(UniRepLKNet):
    """The stage outputs of UniRepLKNet, each LayerNorm-ed (``norm{i}``): ``forward(x)`` -> a list of maps.

    Args:
        out_indices: which stages to return (0-3); each gets its ``norm{i}``. ``out_channels`` lists their widths
            and ``strides`` their strides (4, 8, 16, 32).
        The other arguments are UniRepLKNet's (no ``num_classes`` / ``global_pool``: there is no head).
    """

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), **kwargs):
        for key in ("num_classes", "global_pool", "head_init_scale"):
            if kwargs.pop(key, None) not in (None, 0, ""):
                raise TypeError(f"DenseUniRepLKNet has no classification head; {key} does not apply")
        super().__init__(num_classes=0, global_pool="", **kwargs)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i not in range(4) for i in out_indices) or list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f"out_indices must be increasing stage indices from 0-3, got {out_indices}")
        self.out_indices = out_indices
        del self.norm, self.head
        for i in out_indices:
            self.add_module(f"norm{i}", LayerNorm2d(self.dims[i], eps=1e-6))
        self.out_channels = [self.dims[i] for i in out_indices]
        self.strides = [2 ** (i + 2) for i in out_indices]
        self.feature_info = [info for i, info in enumerate(self.feature_info) if i in out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """B x C' x H x W -> [norm_i(stage i output) for i in out_indices] (B x dims[i] x H/2^(i+2) x W/2^(i+2))."""
        self._check_input(x)
        outs = []
        for i in range(self.out_indices[-1] + 1):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x))
        return outs

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise TypeError("DenseUniRepLKNet has no classification head: forward() returns the stage maps")

    def get_classifier(self):
        raise TypeError("DenseUniRepLKNet has no classification head")

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        raise TypeError("DenseUniRepLKNet has no classification head")

    def checkpoint_filter_fn(self, state: dict, strict: bool = True, skip_head: bool | str = False) -> dict:
        """A published dense, an ImageNet classification or a project checkpoint -> this model's state dict.

        - a detector / segmentor state dict (keys ``backbone.*``): its backbone part, the rest set aside;
        - the classification ``norm.*`` / ``head.*``: dropped;
        - stage norms the checkpoint lacks (a classification checkpoint): this model's own, with a warning;
        - a training-structure checkpoint into a deploy-structure model: re-parameterized through a twin.
        """
        if any(key.startswith(BACKBONE_PREFIX) for key in state):
            state = {k.removeprefix(BACKBONE_PREFIX): v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        state = {k: v for k, v in state.items() if not k.startswith(("norm.", "head."))}
        own = self.state_dict()
        missing_norms = sorted(k for k in own if k.startswith("norm") and k not in state)
        if missing_norms:
            warnings.warn(
                f"the checkpoint has no stage norms ({', '.join(missing_norms)}): they keep their initialization "
                "(a classification checkpoint; fine-tuning learns them)", UserWarning, stacklevel=3)
            state.update({k: own[k] for k in missing_norms})
        deployed = not any(key.endswith("running_mean") for key in own)
        if deployed and any(key.endswith("running_mean") for key in state):
            twin = DenseUniRepLKNet(in_chans=self.in_chans, depths=self.depths, dims=self.dims,
                                    kernel_sizes=self.kernel_sizes, extra_structure=self.extra_structure,
                                    reparam=self.reparam, out_indices=self.out_indices)
            twin.load_state_dict(state, strict=strict)
            return twin.eval().reparameterize().state_dict()
        return state


def create_dense_unireplknet(variant: str, out_indices: Sequence[int] = (0, 1, 2, 3), kernel_size: int | None = None,
                             stage_layouts=None, **kwargs) -> DenseUniRepLKNet:
    """The dense backbone of UniRepLKNet variant ``variant`` (a key of ``VARIANTS``; ``kernel_size`` and
    ``stage_layouts`` as for ``create_unireplknet``)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown UniRepLKNet variant {variant!r}; valid choices: {', '.join(VARIANTS)}")
    depths = VARIANTS[variant]["depths"]
    if stage_layouts is not None:
        depths, kwargs["kernel_sizes"] = layout_kernel_sizes(variant, stage_layouts, kernel_size)
    elif kernel_size is not None:
        kwargs["kernel_sizes"] = override_kernel_size(default_kernel_sizes(depths), kernel_size)
    return DenseUniRepLKNet(out_indices=out_indices, depths=depths, dims=VARIANTS[variant]["dims"], **kwargs)
