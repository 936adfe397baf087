"""UniRepLKNet: a universal perception large-kernel ConvNet (Ding et al., CVPR 2024).

Blocks, the model with the uniform backbone API, the variant table (paper Table 5) and the timm
registration. Module and parameter names follow the published checkpoints, so their weights load with
strict=True in both the training and the deploy (re-parameterized) structure.

Structure (backbone.md):
    stem:        conv3x3 s2 -> LN -> GELU -> conv3x3 s2 -> LN          (stride 4)
    stage i:     [downsample conv3x3 s2 -> LN] then depths[i] blocks    (strides 8, 16, 32)
    block:       y = SE(BN(DW(x)));  y = BN(Linear(GRN(GELU(Linear(y)))));  out = x + DropPath(gamma * y)

The Section 3 ablations are options whose defaults are the published structure: ``extra_structure`` (Table 1:
what sits where SE sits), ``reparam`` (Table 2: the parallel branches of the large-kernel conv) and, through
``create_unireplknet(stage_layouts=...)``, the LarK / SmaK layout of each stage (Table 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from timm.models._features import feature_take_indices
from timm.models import build_model_with_cfg, checkpoint_seq, register_model
from torch import nn

from core.backbones.layers import GRN, SEBlock, ToChannelsFirst, ToChannelsLast
from core.backbones.reparam import fold_ffn_output, fuse_bn, merge_dilated_branches
from core.checkpoint import load_checkpoint, load_state

# Dilated Reparam Block branches per kernel size K: (kernel k, dilation r) of each parallel branch,
# the values the published checkpoints were trained with.
DILATED_BRANCHES: dict[int, tuple[tuple[int, int], ...]] = {
    17: ((5, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    15: ((5, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    13: ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    11: ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    9: ((5, 1), (5, 2), (3, 3), (3, 4)),
    7: ((5, 1), (3, 2), (3, 3)),
    5: ((3, 1), (3, 2)),
}
SMALL_KERNELS = (0, 3, 5)  # 0: no spatial conv; 3 and 5: a plain depthwise conv
LARGE_KERNEL_MIN = 7  # blocks with K >= 7 use the Dilated Reparam Block
SUPPORTED_KERNELS = tuple(sorted({*SMALL_KERNELS, *DILATED_BRANCHES}))

# Table 1: the extra structure of every block (Fig. 3), placed where the published block has its SE Block
EXTRA_STRUCTURES = ("se", "none", "bottleneck", "two_1x1", "two_dw3x3")
# Table 2: the parallel branches that re-parameterize a K x K conv (K >= 7): the Dilated Reparam Block, none,
# the same kernel sizes without dilation (variant A), the same equivalent kernel sizes without dilation (B)
REPARAM_FORMS = ("dilated", "none", "same_kernel", "same_eq_kernel")
# Table 4: one letter per block of a stage layout
LAYOUT_LETTERS = {"L": "LarK (the model's large K)", "S": "SmaK (3 x 3)", "N": "no spatial conv (w/o 3 x 3)"}


def check_kernel_size(kernel_size: int) -> int:
    if kernel_size not in SUPPORTED_KERNELS:
        raise ValueError(
            f"unsupported kernel size {kernel_size!r}; allowed values are {list(SUPPORTED_KERNELS)} "
            "(0 = no spatial conv, 3/5 = plain depthwise conv, 7-17 = Dilated Reparam Block)"
        )
    return kernel_size


def reparam_branches(kernel_size: int, reparam="dilated") -> tuple[tuple[int, int], ...]:
    """The (kernel k, dilation r) of each parallel branch of a K x K conv under re-parameterization form ``reparam``.

    ``reparam`` is one of ``REPARAM_FORMS`` or an explicit list of (k, r) pairs (the same for every K, so each
    branch must fit the smallest large kernel of the model: (k - 1) r + 1 <= K, k odd).
    """
    if isinstance(reparam, str):
        if reparam not in REPARAM_FORMS:
            raise ValueError(f"unknown reparam {reparam!r}; valid choices: {', '.join(REPARAM_FORMS)} "
                             "or a list of [k, r] branches")
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(f"no published branches for K={kernel_size}; supported: {sorted(DILATED_BRANCHES)}")
        published = DILATED_BRANCHES[kernel_size]
        return {
            "dilated": published,
            "none": (),
            "same_kernel": tuple((k, 1) for k, _ in published),
            "same_eq_kernel": tuple(((k - 1) * r + 1, 1) for k, r in published),
        }[reparam]
    try:
        branches = tuple((int(k), int(r)) for k, r in reparam)
    except (TypeError, ValueError):
        raise ValueError(f"reparam branches must be [k, r] pairs, got {reparam!r}") from None
    for k, r in branches:
        if k < 1 or k % 2 == 0 or r < 1 or (k - 1) * r + 1 > kernel_size:
            raise ValueError(
                f"reparam branch (k={k}, r={r}) does not fit a {kernel_size} x {kernel_size} kernel: k must be odd "
                f"and (k - 1) * r + 1 <= {kernel_size}"
            )
    return branches


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


class ConvBN(nn.Sequential):
    """Conv (no bias) + BN, optionally followed by ReLU; ``reparameterize()`` folds the BN into the conv."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, groups: int = 1, relu: bool = True,
                 deploy: bool = False):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_dim, out_dim, kernel_size, padding=kernel_size // 2, groups=groups,
                                          bias=deploy))
        if not deploy:
            self.add_module("bn", _bn(out_dim))
        if relu:
            self.add_module("act", nn.ReLU())

    @torch.no_grad()
    def reparameterize(self) -> None:
        if not hasattr(self, "bn"):
            return
        conv = self.conv
        weight, bias = fuse_bn(conv.weight, conv.bias, self.bn)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                          groups=conv.groups, bias=True).to(weight.device, weight.dtype)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.conv = fused
        del self.bn


def build_extra_structure(name: str, dim: int, deploy: bool = False) -> nn.Module:
    """Table 1 / Fig. 3: the structure a block adds after its spatial conv and BN to gain depth.

    ``se``: the published SE Block (1/4 reduction). The others follow the paper's text, with BN and ReLU after
    every conv: ``bottleneck`` 1x1 (C -> C/4), DW 3x3, 1x1 (C/4 -> C); ``two_1x1`` 1x1 (C -> C/4), 1x1
    (C/4 -> C); ``two_dw3x3`` two DW 3x3 convs; ``none`` nothing.
    """
    if name not in EXTRA_STRUCTURES:
        raise ValueError(f"unknown extra_structure {name!r}; valid choices: {', '.join(EXTRA_STRUCTURES)}")
    reduced = max(dim // 4, 1)
    if name == "se":
        return SEBlock(dim, dim // 4)
    if name == "none":
        return nn.Identity()
    if name == "bottleneck":
        return nn.Sequential(ConvBN(dim, reduced, 1, deploy=deploy),
                             ConvBN(reduced, reduced, 3, groups=reduced, deploy=deploy),
                             ConvBN(reduced, dim, 1, deploy=deploy))
    if name == "two_1x1":
        return nn.Sequential(ConvBN(dim, reduced, 1, deploy=deploy), ConvBN(reduced, dim, 1, deploy=deploy))
    return nn.Sequential(ConvBN(dim, dim, 3, groups=dim, deploy=deploy),
                         ConvBN(dim, dim, 3, groups=dim, deploy=deploy))


def same_depthwise_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a stride-1 depthwise conv with "same" padding (``dilation * (k // 2)``), computed with only
    the kernel taps that can meet the input: on an H x W map a tap further than H - 1 rows (W - 1 columns) from
    the centre only ever multiplies padding zeros, so dropping it changes neither the output nor any gradient.

    Written here because a large kernel on a small map is common in this network (K = 13 on the 7 x 4 and 4 x 2
    maps of the last stages of a mini run, the dilated branches reaching 11 x 11) and oneDNN computes every tap:
    the last stage's 13 x 13 conv on 4 x 2 maps costs about 10x its cropped 7 x 3 form, forward and backward.
    """
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    ch, cw = kh // 2, kw // 2
    keep_h, keep_w = min(ch, (x.shape[-2] - 1) // dh), min(cw, (x.shape[-1] - 1) // dw)
    if (keep_h, keep_w) == (ch, cw):
        return conv(x)
    weight = conv.weight[:, :, ch - keep_h : ch + keep_h + 1, cw - keep_w : cw + keep_w + 1]
    return F.conv2d(x, weight, conv.bias, 1, (keep_h * dh, keep_w * dw), (dh, dw), conv.groups)


class DilatedReparamBlock(nn.Module):
    """Depthwise K x K conv plus parallel dilated small-kernel depthwise convs, each with its own BN.

    ``branches``: the (k, r) of each parallel branch; None: the published ones for K (``DILATED_BRANCHES``).
    Branch modules are named ``dil_conv_k{k}_{r}`` / ``dil_bn_k{k}_{r}`` as in the published checkpoints (a
    repeated (k, r), possible in the Table 2 variants, gets a ``_<n>`` suffix).
    ``reparameterize()`` merges everything into ``lk_origin``: one K x K depthwise conv with bias.
    """

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False,
                 branches: Sequence[tuple[int, int]] | None = None):
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"DilatedReparamBlock needs an odd kernel size >= 3, got {kernel_size!r}")
        if branches is None and kernel_size not in DILATED_BRANCHES:
            raise ValueError(
                f"DilatedReparamBlock supports kernel sizes {sorted(DILATED_BRANCHES)}, got {kernel_size!r}"
            )
        self.kernel_size = kernel_size
        self.branches = DILATED_BRANCHES[kernel_size] if branches is None else reparam_branches(kernel_size, branches)
        self.branch_names = []
        for k, r in self.branches:
            name, n = f"k{k}_{r}", 1
            while name in self.branch_names:
                n += 1
                name = f"k{k}_{r}_{n}"
            self.branch_names.append(name)
        self.lk_origin = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=deploy
        )
        self.deployed = deploy
        if not deploy:
            self.origin_bn = _bn(channels)
            for (k, r), name in zip(self.branches, self.branch_names):
                padding = ((k - 1) * r + 1) // 2
                conv = nn.Conv2d(channels, channels, k, padding=padding, dilation=r, groups=channels, bias=False)
                self.add_module(f"dil_conv_{name}", conv)
                self.add_module(f"dil_bn_{name}", _bn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            return self.lk_origin(x)
        # the training structure (Fig. 2): every conv computed on the taps that meet the map (same values)
        out = self.origin_bn(same_depthwise_conv(self.lk_origin, x))
        for name in self.branch_names:
            out = out + getattr(self, f"dil_bn_{name}")(same_depthwise_conv(getattr(self, f"dil_conv_{name}"), x))
        return out

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single K x K kernel and bias equal to this block in eval mode."""
        if self.deployed:
            return self.lk_origin.weight, self.lk_origin.bias
        main = fuse_bn(self.lk_origin.weight, None, self.origin_bn)
        branches = []
        for (_, r), name in zip(self.branches, self.branch_names):
            weight, bias = fuse_bn(getattr(self, f"dil_conv_{name}").weight, None, getattr(self, f"dil_bn_{name}"))
            branches.append((weight, bias, r))
        return merge_dilated_branches(main, branches)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.deployed:
            return
        weight, bias = self.equivalent_kernel_bias()
        fused = nn.Conv2d(
            weight.shape[0], weight.shape[0], self.kernel_size, padding=self.kernel_size // 2,
            groups=weight.shape[0], bias=True,
        ).to(weight.device, weight.dtype)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.lk_origin = fused
        del self.origin_bn
        for name in self.branch_names:
            delattr(self, f"dil_conv_{name}")
            delattr(self, f"dil_bn_{name}")
        self.deployed = True


class UniRepLKNetBlock(nn.Module):
    """One UniRepLKNet block: depthwise spatial conv + BN + SE, then a GRN FFN, layer scale and drop path.

    K >= 7 is a large-kernel (LarK) block using the Dilated Reparam Block; K = 3 or 5 a small-kernel (SmaK)
    block with a plain depthwise conv; K = 0 has no spatial conv. ``extra_structure`` (Table 1) replaces the SE
    Block (the module keeps the name ``se``); ``reparam`` (Table 2) sets the parallel branches of a LarK conv.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        deploy: bool = False,
        ffn_factor: int = 4,
        extra_structure: str = "se",
        reparam="dilated",
    ):
        super().__init__()
        check_kernel_size(kernel_size)
        self.kernel_size = kernel_size
        if kernel_size == 0:
            self.dwconv = nn.Identity()
        elif kernel_size >= LARGE_KERNEL_MIN:
            self.dwconv = DilatedReparamBlock(dim, kernel_size, deploy=deploy,
                                              branches=reparam_branches(kernel_size, reparam))
        else:
            self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=deploy)
        self.norm = nn.Identity() if deploy or kernel_size == 0 else _bn(dim)
        self.extra_structure = extra_structure
        self.se = build_extra_structure(extra_structure, dim, deploy=deploy)
        hidden = ffn_factor * dim
        self.pwconv1 = nn.Sequential(ToChannelsLast(), nn.Linear(dim, hidden))
        self.act = nn.Sequential(nn.GELU(), GRN(hidden, use_bias=not deploy))
        if deploy:
            self.pwconv2 = nn.Sequential(nn.Linear(hidden, dim, bias=True), ToChannelsFirst(), nn.Identity())
        else:
            self.pwconv2 = nn.Sequential(nn.Linear(hidden, dim, bias=False), ToChannelsFirst(), _bn(dim))
        use_scale = not deploy and layer_scale_init_value is not None and layer_scale_init_value > 0
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if use_scale else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.deployed = deploy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.norm(self.dwconv(x)))  # B x C x H x W
        y = self.pwconv1(y)  # -> B x H x W x 4C
        y = self.act(y)  # GELU, GRN
        y = self.pwconv2(y)  # -> B x C x H x W, BN
        if self.gamma is not None:
            y = self.gamma.view(1, -1, 1, 1) * y
        return x + self.drop_path(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fuse the spatial conv with its BN(s) and the FFN output with GRN beta, BN and layer scale."""
        if self.deployed:
            return
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.reparameterize()
            conv = self.dwconv.lk_origin
        elif isinstance(self.dwconv, nn.Conv2d):
            conv = self.dwconv
        else:
            conv = None
        if conv is not None:
            weight, bias = fuse_bn(conv.weight, conv.bias, self.norm)
            fused = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                groups=conv.groups, bias=True,
            ).to(weight.device, weight.dtype)
            fused.weight.copy_(weight)
            fused.bias.copy_(bias)
            if isinstance(self.dwconv, DilatedReparamBlock):
                self.dwconv.lk_origin = fused
            else:
                self.dwconv = fused
        self.norm = nn.Identity()
        for module in self.se.modules():  # the BNs of a Table 1 extra structure (SE has none)
            if isinstance(module, ConvBN):
                module.reparameterize()

        grn: GRN = self.act[1]
        linear: nn.Linear = self.pwconv2[0]
        weight, bias = fold_ffn_output(linear.weight, grn.beta, self.pwconv2[2], self.gamma)
        fused_linear = nn.Linear(linear.in_features, linear.out_features, bias=True).to(weight.device, weight.dtype)
        fused_linear.weight.copy_(weight)
        fused_linear.bias.copy_(bias)
        self.pwconv2 = nn.Sequential(fused_linear, ToChannelsFirst(), nn.Identity())
        grn.beta = None
        self.gamma = None
        self.deployed = True


def _stem(in_chans: int, dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1),
        LayerNorm2d(dim // 2, eps=1e-6),
        nn.GELU(),
        nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1),
        LayerNorm2d(dim, eps=1e-6),
    )


def _downsample(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1),
        LayerNorm2d(out_dim, eps=1e-6),
    )


class UniRepLKNet(nn.Module):
    """UniRepLKNet backbone with an optional classification head.

    Args:
        in_chans: channels C' of the embedding map (3 for images, 1 for audio spectrograms, ...).
        num_classes: classes of the linear head; 0 returns the pooled, normalized features (num_features wide).
        depths, dims: blocks and channels per stage.
        kernel_sizes: per stage, one kernel size per block (see ``SUPPORTED_KERNELS``).
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        layer_scale_init_value: initial layer scale (None or 0 disables it).
        head_init_scale: multiplier of the initial head weight and bias.
        deploy: build the re-parameterized (inference) structure directly.
        extra_structure: Table 1, what every block has where the published one has its SE Block
            (``EXTRA_STRUCTURES``; default "se").
        reparam: Table 2, the parallel branches of every LarK conv: a form of ``REPARAM_FORMS`` (default
            "dilated", the Dilated Reparam Block) or a list of [k, r] branches.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 27, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        kernel_sizes: Sequence[Sequence[int]] | None = None,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        head_init_scale: float = 1.0,
        deploy: bool = False,
        global_pool: str = "avg",
        extra_structure: str = "se",
        reparam="dilated",
    ):
        super().__init__()
        depths, dims = tuple(depths), tuple(dims)
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"depths and dims must have 4 entries (one per stage), got {depths} and {dims}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
        kernel_sizes = default_kernel_sizes(depths) if kernel_sizes is None else kernel_sizes
        kernel_sizes = tuple(tuple(int(k) for k in stage) for stage in kernel_sizes)
        if len(kernel_sizes) != 4 or any(len(ks) != d for ks, d in zip(kernel_sizes, depths)):
            raise ValueError(
                f"kernel_sizes must give one kernel size per block of each stage (depths {depths}), "
                f"got {kernel_sizes}"
            )
        for stage in kernel_sizes:
            for k in stage:
                check_kernel_size(k)
                if k >= LARGE_KERNEL_MIN:
                    reparam_branches(k, reparam)  # an unknown form or a branch too large for K fails here
        self.extra_structure = extra_structure
        self.reparam = reparam if isinstance(reparam, str) else tuple(tuple(int(v) for v in b) for b in reparam)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.depths, self.dims, self.kernel_sizes = depths, dims, kernel_sizes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False

        self.downsample_layers = nn.ModuleList(
            [_stem(in_chans, dims[0])] + [_downsample(dims[i - 1], dims[i]) for i in range(1, 4)]
        )
        total = sum(depths)  # drop-path rates rising linearly from 0 to drop_path_rate over all blocks
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        cursor = 0
        for i in range(4):
            blocks = [
                UniRepLKNetBlock(
                    dims[i], kernel_sizes[i][j], drop_path=rates[cursor + j],
                    layer_scale_init_value=layer_scale_init_value, deploy=deploy,
                    extra_structure=extra_structure, reparam=self.reparam,
                )
                for j in range(depths[i])
            ]
            self.stages.append(nn.Sequential(*blocks))
            cursor += depths[i]
        self.feature_info = [
            dict(num_chs=dims[i], reduction=2 ** (i + 2), module=f"stages.{i}") for i in range(4)
        ]
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # --- the uniform backbone API -------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"UniRepLKNet expects a B x {self.in_chans} x H x W input (in_chans={self.in_chans}), "
                f"got a tensor of shape {tuple(x.shape)}"
            )
        # Five stride-2 convolutions (padding 1) leave a ceil(H/32) x ceil(W/32) stage-4 map. Any size runs in
        # eval mode (a 13 x 13 kernel on a 1 x 4 map is just zero padding), but BatchNorm cannot train on one
        # value per channel: say so, with the way out, instead of BatchNorm's bare message deep inside stage 4.
        h, w = -(-x.shape[2] // 32), -(-x.shape[3] // 32)
        if self.training and x.shape[0] * h * w < 2 and any(isinstance(m, nn.BatchNorm2d) for m in self.modules()):
            raise ValueError(
                f"a batch of {x.shape[0]} input of {x.shape[2]} x {x.shape[3]} leaves a {h} x {w} stage-4 map: one "
                "value per channel, on which BatchNorm cannot train; use a batch of 2 or more, or inputs of at "
                "least 33 px on one side (eval mode takes any size)"
            )

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Stage outputs at strides 4, 8, 16, 32 for dense tasks (timm's signature and semantics).

        ``indices``: which stages (None = all four; an int n = the last n). Returns the list of maps, or
        (last-stage map, list) unless ``intermediates_only``. ``norm`` is accepted for timm compatibility;
        the stage maps carry no extra norm (the published dense models add their own ``norm0..3``).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        self._check_input(x)
        take, last = feature_take_indices(4, indices)
        maps = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in take:
                maps.append(x)
            if stop_early and i == last:
                break
        return maps if intermediates_only else (x, maps)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """B x C' x H x W -> the last stage's B x num_features x H/32 x W/32 map."""
        self._check_input(x)
        for i in range(4):
            x = self.downsample_layers[i](x)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(self.stages[i], x)
            else:
                x = self.stages[i](x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, LayerNorm, then the linear head (skipped with ``pre_logits``)."""
        if self.global_pool == "avg":
            x = self.norm(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^downsample_layers\.0",
            blocks=r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.(\d+)", None), (r"^downsample_layers\.(\d+)", (0,))],
        )

    def reparameterize(self) -> "UniRepLKNet":
        """Convert to the deploy structure in place (idempotent). Equal outputs in eval mode."""
        for module in self.modules():
            if isinstance(module, UniRepLKNetBlock):
                module.reparameterize()
        return self

    def load_pretrained(self, path, **kwargs) -> None:
        """timm hook (``custom_load``): load a published checkpoint file safely, see core.checkpoint."""
        load_checkpoint(self, path, skip_head=kwargs.pop("skip_head", "auto"), **kwargs)

    def checkpoint_filter_fn(self, state: dict, strict: bool = True, skip_head: bool | str = False) -> dict:
        """A checkpoint's state dict in this model's structure: a training-structure checkpoint for a deploy-
        structure model is loaded into a training twin and re-parameterized; anything else passes unchanged."""
        deployed = not any(key.endswith("running_mean") for key in self.state_dict())
        if not deployed or not any(key.endswith("running_mean") for key in state):
            return state
        twin = UniRepLKNet(
            in_chans=self.in_chans, num_classes=self.num_classes, depths=self.depths, dims=self.dims,
            kernel_sizes=self.kernel_sizes, global_pool=self.global_pool,
            extra_structure=self.extra_structure, reparam=self.reparam,
        )
        load_state(twin, state, strict=strict, skip_head=skip_head)
        if skip_head and isinstance(self.head, nn.Linear):
            twin.head.load_state_dict(self.head.state_dict())
        return twin.eval().reparameterize().state_dict()


# --- variants (paper Table 5) -------------------------------------------------------------------------

VARIANTS: dict[str, dict] = {
    "a": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320)),
    "f": dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384)),
    "p": dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512)),
    "n": dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640)),
    "t": dict(depths=(3, 3, 18, 3), dims=(80, 160, 320, 640)),
    "s": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "b": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    "l": dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
    "xl": dict(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048)),
    # a tiny variant with the same block kinds in every stage, for fast tests and the mini recipes
    "test": dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128)),
}


def default_kernel_sizes(depths: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """The published per-block kernel sizes for a depth configuration (backbone.md)."""
    d1, d2, d3, d4 = depths
    if d1 == 3:  # T, S, B, L, XL
        stage3 = (13, 3) * (d3 // 2) if d3 == 18 else (13, 3, 3) * (d3 // 3)
        return (3,) * d1, (13,) * d2, stage3, (13,) * d4
    if depths == (1, 1, 2, 1):  # the test variant: one SmaK and one LarK block in stage 3
        return (3,), (13,), (13, 3), (13,)
    return (3,) * d1, (13,) * d2, (13,) * d3, (13,) * d4


def stage_kernel_sizes(variant: str, per_stage: Sequence[int]) -> list[list[int]]:
    """Per-stage kernel sizes (paper Table 3: S1-S4) -> per-block ``kernel_sizes`` of UniRepLKNet ``variant``.

    In each stage the blocks with a large kernel by default (K >= 7) get the stage's K, so the interleaved 3x3
    blocks of a deep stage 3 stay 3x3; a stage without large kernels by default (stage 1) gets K in every block.
    """
    if variant not in VARIANTS:
        raise ValueError(f"stage kernel sizes apply to UniRepLKNet only, not to {variant!r}")
    per_stage = [check_kernel_size(int(k)) for k in per_stage]
    if len(per_stage) != 4:
        raise ValueError(f"stage kernel sizes need one K per stage (4), got {per_stage}")
    blocks = []
    for stage, k in zip(default_kernel_sizes(VARIANTS[variant]["depths"]), per_stage):
        has_large = any(d >= LARGE_KERNEL_MIN for d in stage)
        blocks.append([k if d >= LARGE_KERNEL_MIN or not has_large else d for d in stage])
    return blocks


def parse_layout(layout: str) -> str:
    """A stage layout in Table 4's terms -> one letter per block (``LAYOUT_LETTERS``).

    Letters L (LarK), S (SmaK 3x3), N (no spatial conv: "w/o 3x3"); a part may be repeated with ``*n`` and parts
    are joined with ``+``: ``"LSS*9"`` is nine times LarK, SmaK, SmaK (the published 27-block stage 3),
    ``"LS*13+L"`` the interleaved 14 LarK + 13 SmaK, ``"L*27"`` all LarK.
    """
    blocks = []
    for part in str(layout).replace(" ", "").upper().split("+"):
        pattern, _, times = part.partition("*")
        if not pattern or any(c not in LAYOUT_LETTERS for c in pattern) or (times and not times.isdigit()):
            raise ValueError(
                f"bad stage layout {layout!r}: expected letters {'/'.join(LAYOUT_LETTERS)} (LarK / SmaK / no spatial "
                "conv), optionally repeated with *n and joined with +, e.g. 'LSS*9' or 'LS*13+L'"
            )
        blocks.append(pattern * (int(times) if times else 1))
    letters = "".join(blocks)
    if not letters:
        raise ValueError(f"stage layout {layout!r} has no blocks")
    return letters


def layout_kernel_sizes(variant: str, stage_layouts, kernel_size: int | None = None):
    """``stage_layouts`` (one layout string or None per stage) -> (depths, kernel_sizes) of UniRepLKNet ``variant``.

    A stage given a layout gets one block per letter (L: ``kernel_size`` or 13, S: 3, N: 0); a stage left None keeps
    the variant's blocks (their large kernels set to ``kernel_size`` when given). Paper Table 4 on S:
    ``[None, None, "LSS*9", None]`` is the published S, ``"L*9"`` the shallow model of Tables 1-3.
    """
    if variant not in VARIANTS:
        raise ValueError(f"stage layouts apply to UniRepLKNet only, not to {variant!r}")
    if stage_layouts is None or isinstance(stage_layouts, str) or len(stage_layouts) != 4:
        raise ValueError(f"stage_layouts needs one entry per stage (4; None keeps a stage), got {stage_layouts!r}")
    large = check_kernel_size(int(kernel_size)) if kernel_size is not None else 13
    if large < LARGE_KERNEL_MIN:
        raise ValueError(f"the L blocks of a layout need a large kernel (K >= {LARGE_KERNEL_MIN}), got {large}")
    defaults = default_kernel_sizes(VARIANTS[variant]["depths"])
    if kernel_size is not None:
        defaults = override_kernel_size(defaults, kernel_size)
    letters_to_k = {"L": large, "S": 3, "N": 0}
    kernels = [list(d) if layout is None else [letters_to_k[c] for c in parse_layout(layout)]
               for d, layout in zip(defaults, stage_layouts)]
    return tuple(len(k) for k in kernels), kernels


def override_kernel_size(kernel_sizes, kernel_size: int):
    """Replace K of every large-kernel block (default K >= 7) by ``kernel_size`` (Table 3 / 13 ablations)."""
    check_kernel_size(kernel_size)
    return tuple(tuple(kernel_size if k >= LARGE_KERNEL_MIN else k for k in stage) for stage in kernel_sizes)


def _cfg(**kwargs) -> dict:
    return dict(
        url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
        interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv="downsample_layers.0.0", classifier="head", custom_load=True,
        license="apache-2.0", paper_ids="arXiv:2311.15599", **kwargs,
    )


def create_unireplknet(
    variant: str, pretrained: bool = False, kernel_size: int | None = None, stage_layouts=None, **kwargs
) -> UniRepLKNet:
    """UniRepLKNet variant ``variant`` (a key of ``VARIANTS``) of this module, built with timm's
    ``build_model_with_cfg`` (pretrained-cfg, ``features_only``) but without timm's global name registry.

    ``stage_layouts`` (Table 4): per stage a LarK / SmaK layout string or None, see ``layout_kernel_sizes``; it
    sets that stage's depth and kernel sizes."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown UniRepLKNet variant {variant!r}; valid choices: {', '.join(VARIANTS)}")
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not overlay.get("file"):
        raise RuntimeError(
            f"unireplknet_{variant}: weights are never downloaded at run time. Download the published file "
            "(Hugging Face repo DingXiaoH/UniRepLKNet) and pass pretrained_cfg_overlay=dict(file=PATH), "
            "or call core.load_checkpoint(model, PATH)."
        )
    if overlay.get("file"):  # route weight files through core.checkpoint (weights-only, in_chans, structure)
        kwargs["pretrained_cfg_overlay"] = {"custom_load": True, **overlay}
    arch = dict(VARIANTS[variant])
    if stage_layouts is not None:
        if kwargs.get("kernel_sizes") is not None:
            raise ValueError("give either stage_layouts or kernel_sizes, not both")
        arch["depths"], kwargs["kernel_sizes"] = layout_kernel_sizes(variant, stage_layouts, kernel_size)
    elif kernel_size is not None:
        if kwargs.get("kernel_sizes") is not None:
            raise ValueError("give either kernel_size (overrides every large kernel) or kernel_sizes, not both")
        kwargs["kernel_sizes"] = override_kernel_size(default_kernel_sizes(arch["depths"]), kernel_size)
    for key in ("depths", "dims"):
        if key in kwargs:
            raise TypeError(f"unireplknet_{variant} fixes {key}; build UniRepLKNet(...) directly for custom shapes")
    return build_model_with_cfg(
        UniRepLKNet, f"unireplknet_{variant}", pretrained,
        pretrained_cfg=kwargs.pop("pretrained_cfg", None) or _cfg(),
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **arch, **kwargs,
    )


def _register(variant: str) -> None:
    """Register ``unireplknet_<variant>`` in timm (for ``timm.create_model`` users; ``core.create_backbone`` does
    not go through the registry)."""

    def entrypoint(pretrained: bool = False, **kwargs) -> UniRepLKNet:
        return create_unireplknet(variant, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = f"unireplknet_{variant}"
    entrypoint.__doc__ = f"UniRepLKNet-{variant.upper()} (see ``create_unireplknet``)."
    globals()[entrypoint.__name__] = register_model(entrypoint)


for _variant in VARIANTS:
    _register(_variant)
