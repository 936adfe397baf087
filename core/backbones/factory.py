"""One factory for every backbone the project trains: UniRepLKNet variants and the Table 13 baselines.

The baselines come from timm (ResNet, ConvNeXt), which already provides ``in_chans`` adaptation of the first
conv, ``num_classes=0`` pooled features and the same feature API as UniRepLKNet.

Every name resolves through this module's own tables to the project's classes and timm's model functions,
never through timm's global name registry: a module that registers the same names in timm (the public
UniRepLKNet file does, on import) cannot replace what ``create_backbone`` builds. ``timm.create_model`` users
still get the project's UniRepLKNet through the registration in ``core.backbones.unireplknet``.
"""

from __future__ import annotations

from collections.abc import Callable

from timm.models import convnext, resnet
from torch import nn

from core.backbones import unireplknet
from core.backbones.dense import create_dense_unireplknet

UNIREPLKNET = tuple(f"unireplknet_{v}" for v in unireplknet.VARIANTS)

# project name -> (timm's model function, the fixed spatial kernel size of its blocks)
BASELINES: dict[str, tuple[Callable[..., nn.Module], int]] = {
    "resnet101": (resnet.resnet101, 3),
    "convnext_s": (convnext.convnext_small, 7),
    # small counterparts for the CPU-scale (mini) Table 13 grid
    "resnet18": (resnet.resnet18, 3),
    "convnext_atto": (convnext.convnext_atto, 7),
}


def list_backbones() -> list[str]:
    """Every name ``create_backbone`` accepts."""
    return [*UNIREPLKNET, *BASELINES]


def create_backbone(
    name: str,
    in_chans: int = 3,
    num_classes: int = 0,
    kernel_size: int | None = None,
    dense: bool = False,
    **kwargs,
) -> nn.Module:
    """Build a backbone by name.

    Args:
        name: one of ``list_backbones()``.
        in_chans: channels C' of the input map.
        num_classes: head size; 0 gives pooled features of width ``model.num_features``.
        kernel_size: UniRepLKNet only: K of every large-kernel block (Table 3 / Table 13 ablations).
            For a baseline it may only restate the baseline's own K.
        dense: the backbone of a dense-prediction head instead: no classifier, ``forward`` returns the stage maps
            of ``out_indices`` (default all four, strides 4-32) and ``out_channels`` lists their widths
            (UniRepLKNet: ``DenseUniRepLKNet`` with the published ``norm0..3``; a baseline: timm's
            ``features_only`` model).
        kwargs: forwarded to the model (e.g. ``kernel_sizes``, ``drop_path_rate``, ``deploy``);
            unknown names raise TypeError.
    """
    kwargs = {key: value for key, value in kwargs.items() if value is not None}  # None = the model's default
    if dense and num_classes:
        raise ValueError(f"a dense backbone has no classifier; got num_classes={num_classes}")
    if name in UNIREPLKNET:
        variant = name.removeprefix("unireplknet_")
        if dense:
            return create_dense_unireplknet(variant, in_chans=in_chans, kernel_size=kernel_size, **kwargs)
        return unireplknet.create_unireplknet(
            variant, in_chans=in_chans, num_classes=num_classes, kernel_size=kernel_size, **kwargs
        )
    if name in BASELINES:
        build, fixed_kernel = BASELINES[name]
        if kernel_size is not None and kernel_size != fixed_kernel:
            raise ValueError(f"{name} has a fixed kernel size of {fixed_kernel}; got kernel_size={kernel_size}")
        if kwargs.pop("deploy", False):
            raise ValueError(f"{name} has no re-parameterizable structure; deploy=True applies to UniRepLKNet only")
        if kwargs.pop("kernel_sizes", None) is not None:
            raise ValueError(f"{name} has fixed kernel sizes; kernel_sizes applies to UniRepLKNet only")
        if dense:
            # the stride 4-32 maps: timm's ResNets list the stride-2 stem first, its ConvNeXts start at stride 4
            strides_4_to_32 = (1, 2, 3, 4) if name.startswith("resnet") else (0, 1, 2, 3)
            model = build(in_chans=in_chans, features_only=True, out_indices=kwargs.pop("out_indices", strides_4_to_32),
                          **kwargs)
            model.out_channels = model.feature_info.channels()
            return model
        return build(in_chans=in_chans, num_classes=num_classes, **kwargs)
    raise ValueError(f"unknown backbone {name!r}; valid choices: {', '.join(list_backbones())}")


def declared_kernel_size(name: str) -> int | None:
    """The largest K of backbone ``name`` as built without overrides (a baseline's fixed K), None if unknown."""
    if name in BASELINES:
        return BASELINES[name][1]
    variant = str(name).removeprefix("unireplknet_")
    if variant not in unireplknet.VARIANTS:
        return None
    return max(k for stage in unireplknet.default_kernel_sizes(unireplknet.VARIANTS[variant]["depths"]) for k in stage)


def backbone_kernel_sizes(model: nn.Module, name: str | None = None) -> list[list[int]] | int | None:
    """The per-stage kernel sizes of a UniRepLKNet, or a baseline's fixed K (for results tables)."""
    if isinstance(model, unireplknet.UniRepLKNet):
        return [list(stage) for stage in model.kernel_sizes]
    if name in BASELINES:
        return BASELINES[name][1]
    return None


def reparameterize(model: nn.Module) -> nn.Module:
    """Turn every re-parameterizable module of ``model`` into its deploy structure (in place, idempotent).

    Works on any model that contains UniRepLKNet blocks (e.g. a task wrapping a backbone); a no-op otherwise.
    """
    for module in model.modules():
        if isinstance(module, unireplknet.UniRepLKNetBlock):
            module.reparameterize()
    return model
