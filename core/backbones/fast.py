"""The fast inference path: ``optimize_for_inference(model)`` returns the fastest equivalent model.

Why hand-written: neither timm nor torch ships this. Profiles of the deploy structure on this project's CPU
(torch.profiler, batch 32 at 224, see docs/performance.md) put most of the time in the two FFN matrix products
and in the element-wise passes over the 4C-wide hidden map (bias copy, GELU, GRN scale, the NCHW <-> NHWC
copies around the Linear layers), then in the depthwise convs. ``FastUniRepLKNet`` therefore

- keeps the residual stream in NHWC (channels last), where the FFN is one plain matrix product over all
  pixels and the stem / downsampling LayerNorms are ordinary last-dimension LayerNorms;
- runs each depthwise conv in the memory format measured fastest for its shape when an example input is given
  (``choose_dw_formats``), channels_last otherwise: with torch 2.9.1 on this project's CPU a 13 x 13 depthwise
  conv ran 8-30x faster in channels_last than in NCHW, the reverse of what a sibling machine showed
  (environment.md), so the format is measured, not assumed; the SE scale is applied in the pass that writes
  the NHWC FFN input;
- computes SE on B x C vectors with plain matrix products (a 1x1 conv on a 1 x 1 map costs 10x more);
- applies GELU in oneDNN's epilogue of the first FFN product, folds the per-sample GRN scale into a
  per-sample copy of the output weight where that matrix is smaller than the hidden map, and accumulates the
  output product straight into the residual sum (no separate bias copy or residual pass):

      SE:   W1 (s * y)                = W1 (y')  with y' written once, already scaled, in NHWC
      GRN:  W2 ((1 + g Nx) * h) + b2  = (W2 * (1 + g Nx)) h + b2,  accumulated into (x + b2)

Everything is exact algebra, so outputs equal the eval-mode training structure to float32 round-off.
``optimize_for_inference`` then picks eager or ``torch.compile`` (with or without weight freezing) by
measurement.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from core.backbones.unireplknet import DilatedReparamBlock, UniRepLKNet, UniRepLKNetBlock

CANDIDATES = ("eager", "compile", "compile_frozen")


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """``model`` as run by a candidate mode: "eager" (itself), "compile" (``torch.compile``) or
    "compile_frozen" (``torch.compile`` with Inductor's freezing: weights become constants, so on CPU the convs
    and Linears are lowered to oneDNN with pre-packed weights and fused epilogues; inference only)."""
    if mode == "eager":
        return model
    if mode == "compile":
        return torch.compile(model)
    if mode == "compile_frozen":
        return torch.compile(model, options={"freezing": True})
    raise ValueError(f"unknown mode {mode!r}; valid choices: {', '.join(CANDIDATES)}")


# Measured on this project's CPU (batch 32; docs/performance.md): the first FFN product with GELU in oneDNN's
# epilogue beats Linear + separate GELU at every map size; up to 28 x 28 maps as a Linear (1 thread, CPU time),
# on 56 x 56 maps as a 1x1 convolution over the channels_last view (139 vs 165 ms as a fused Linear and 181 ms
# as Linear + GELU, UniRepLKNet-N stage 1, 2 threads). A plain sum of squares beats vector_norm for the GRN
# norms up to 28 x 28. All forms are the same arithmetic.
FUSED_LINEAR_MAX_PIXELS = 28 * 28
SQUARE_SUM_MAX_PIXELS = 28 * 28
_MKLDNN = torch.backends.mkldnn.is_available()


def _linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU(x W^T + b) for a B x H x W x C map, in oneDNN's fused form where available (eager on CPU: neither
    TorchScript nor torch.compile can lower these ops with unpacked weights; torch.compile fuses the GELU
    itself)."""
    if not torch.compiler.is_compiling() and not torch.jit.is_scripting() and x.device.type == "cpu" and _MKLDNN:
        # is_compiling() first: Dynamo treats it as a constant, where mkldnn.is_available() breaks the graph
        b, h, w, c = x.shape
        if h * w <= FUSED_LINEAR_MAX_PIXELS:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
        out = torch.ops.mkldnn._convolution_pointwise(  # NCHW view of NHWC memory: a channels_last 1x1 conv
            x.permute(0, 3, 1, 2), weight.view(weight.shape[0], c, 1, 1), bias,
            [0, 0], [1, 1], [1, 1], 1, "gelu", [], "none",
        )
        return out.permute(0, 2, 3, 1).contiguous()  # a no-op: the output is channels_last
    out = F.linear(x, weight, bias)
    return F.gelu(out) if torch.jit.is_scripting() else torch._C._nn.gelu_(out)


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=False)


class FastBlock(nn.Module):
    """Inference-only UniRepLKNet block on an NHWC (B x H x W x C) residual stream.

    Built from a re-parameterized ``UniRepLKNetBlock``. ``dw_channels_first`` runs the depthwise conv in NCHW
    instead of channels_last (``choose_dw_formats`` sets it by timing).
    """

    def __init__(self, block: UniRepLKNetBlock, dw_channels_first: bool | None = None):
        super().__init__()
        if not block.deployed:
            raise ValueError("FastBlock needs a re-parameterized block (call reparameterize() first)")
        conv = block.dwconv.lk_origin if isinstance(block.dwconv, DilatedReparamBlock) else block.dwconv
        self.kernel_size = block.kernel_size
        if isinstance(conv, nn.Conv2d):
            self.dw_weight = _frozen(conv.weight)  # C x 1 x K x K
            self.dw_bias = _frozen(conv.bias)
        else:  # K = 0: no spatial conv
            self.dw_weight = self.dw_bias = None
        self.dw_channels_first = bool(dw_channels_first)
        se = block.se
        self.se_w1, self.se_b1 = _frozen(se.down.weight.flatten(1)), _frozen(se.down.bias)  # C/4 x C
        self.se_w2, self.se_b2 = _frozen(se.up.weight.flatten(1)), _frozen(se.up.bias)  # C x C/4
        linear1, linear2 = block.pwconv1[1], block.pwconv2[0]
        self.w1, self.b1 = _frozen(linear1.weight), _frozen(linear1.bias)  # 4C x C
        self.w2t, self.b2 = _frozen(linear2.weight.t()), _frozen(linear2.bias)  # 4C x C (transposed), C
        self.grn_gamma = _frozen(block.act[1].gamma.flatten())  # 4C

    def _dwconv(self, x: torch.Tensor) -> torch.Tensor:
        """B x H x W x C -> the depthwise conv output as a B x C x H x W tensor (NCHW or channels_last)."""
        k = self.kernel_size
        nchw = x.permute(0, 3, 1, 2)  # a channels_last view
        if self.dw_channels_first:
            nchw = nchw.contiguous()
        return F.conv2d(nchw, self.dw_weight, self.dw_bias, padding=k // 2, groups=self.dw_weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        hw = h * w
        y = self._dwconv(x) if self.dw_weight is not None else x.permute(0, 3, 1, 2)  # B x C x H x W
        pooled = y.mean(dim=(2, 3))  # B x C
        scale = torch.sigmoid(F.linear(F.relu(F.linear(pooled, self.se_w1, self.se_b1)), self.se_w2, self.se_b2))
        # the scaled map, written once in NHWC: B x H x W x C
        y = torch.mul(y.permute(0, 2, 3, 1), scale.view(b, 1, 1, c), out=x.new_empty(b, h, w, c))
        hidden = _linear_gelu(y, self.w1, self.b1)  # B x H x W x 4C
        hidden = hidden.view(b, hw, 4 * c)
        # GRN: B x 4C L2 norms over the pixels (a sum of squares is faster than vector_norm on small maps)
        if hw <= SQUARE_SUM_MAX_PIXELS:
            gx = hidden.square().sum(dim=1).sqrt()
        else:
            gx = torch.linalg.vector_norm(hidden, ord=2, dim=1)
        grn = torch.addcmul(torch.ones_like(gx), self.grn_gamma, gx / (gx.mean(dim=1, keepdim=True) + 1e-6))
        out = x + self.b2  # B x H x W x C: the residual sum, the FFN output is accumulated into it
        if c < hw:  # the GRN scale folded into a per-sample W2 (smaller than the hidden map)
            out.view(b, hw, c).baddbmm_(hidden, self.w2t * grn.view(b, 4 * c, 1))
        else:
            out.view(b * hw, c).addmm_((hidden * grn.view(b, 1, 4 * c)).view(b * hw, 4 * c), self.w2t)
        return out


class FastDownsample(nn.Module):
    """Stem or downsampling layer (conv3x3 s2 -> LN [-> GELU -> conv3x3 s2 -> LN]) producing NHWC output.

    Convs run in channels_last, the channels-first LayerNorms become last-dimension LayerNorms.
    """

    def __init__(self, layers: nn.Sequential):
        super().__init__()
        self.steps = nn.ModuleList()
        self.kinds: list[str] = []
        for layer in layers:
            if isinstance(layer, nn.Conv2d):
                conv = copy.deepcopy(layer).to(memory_format=torch.channels_last)
                self.steps.append(conv)
                self.kinds.append("conv")
            elif isinstance(layer, nn.LayerNorm):  # timm's LayerNorm2d subclasses nn.LayerNorm
                self.steps.append(nn.LayerNorm(layer.normalized_shape, eps=layer.eps).to(layer.weight.device))
                self.steps[-1].load_state_dict(layer.state_dict())
                self.kinds.append("norm")
            elif isinstance(layer, nn.GELU):
                self.steps.append(nn.GELU())
                self.kinds.append("gelu")
            else:
                raise TypeError(f"FastDownsample cannot convert a {type(layer).__name__}")

    def forward(self, x: torch.Tensor, nhwc_input: bool = True) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2) if nhwc_input else x.contiguous(memory_format=torch.channels_last)
        nhwc = False
        for step, kind in zip(self.steps, self.kinds):
            if kind == "conv":
                x = step(x.permute(0, 3, 1, 2) if nhwc else x)
                x, nhwc = x.permute(0, 2, 3, 1), True
            else:
                x = step(x)
        return x.contiguous()


class FastUniRepLKNet(nn.Module):
    """Inference-only UniRepLKNet: NHWC residual stream, per-layer memory format for the depthwise convs.

    Same outputs as the eval-mode ``UniRepLKNet`` it was built from (``forward``, ``forward_features``,
    ``forward_head``); built by ``to_fast_model``.
    """

    def __init__(self, model: UniRepLKNet):
        super().__init__()
        model = copy.deepcopy(model).eval().reparameterize()
        self.in_chans, self.num_classes = model.in_chans, model.num_classes
        self.num_features, self.global_pool = model.num_features, model.global_pool
        self.downsample_layers = nn.ModuleList(FastDownsample(layers) for layers in model.downsample_layers)
        self.stages = nn.ModuleList(nn.Sequential(*(FastBlock(b) for b in stage)) for stage in model.stages)
        self.norm, self.head = model.norm, model.head
        for p in self.parameters():
            p.requires_grad_(False)

    _check_input = UniRepLKNet._check_input  # the same input check and message (uses only in_chans)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """B x C' x H x W -> B x num_features x H/32 x W/32 (a channels_last tensor)."""
        self._check_input(x)
        x = self.downsample_layers[0](x, nhwc_input=False)
        x = self.stages[0](x)
        for i in range(1, 4):
            x = self.stages[i](self.downsample_layers[i](x))
        return x.permute(0, 3, 1, 2)

    forward_head = UniRepLKNet.forward_head  # pooling, LayerNorm, head: unchanged
    forward = UniRepLKNet.forward


def to_fast_model(model: nn.Module) -> nn.Module:
    """The fast inference structure of ``model`` (a copy; ``model`` is untouched).

    A ``UniRepLKNet`` becomes a ``FastUniRepLKNet``; in any other model (e.g. a task wrapping a backbone)
    every ``UniRepLKNet`` submodule is replaced. The result is in eval mode with frozen parameters.
    """
    if isinstance(model, UniRepLKNet):
        return FastUniRepLKNet(model)
    model = copy.deepcopy(model).eval()
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, UniRepLKNet):
                setattr(parent, name, FastUniRepLKNet(child))
                replaced += 1
    if not replaced:
        raise TypeError(f"{type(model).__name__} contains no UniRepLKNet; nothing to optimize")
    return model


def _median_seconds(fn, args: tuple, repeats: int) -> float:
    times = []
    with torch.inference_mode():
        fn(*args)  # warm-up (and compilation)
        for _ in range(repeats):
            start = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def choose_dw_formats(fast: nn.Module, example_input: torch.Tensor, repeats: int = 3) -> dict[str, str]:
    """Time every distinct depthwise conv of ``fast`` in NCHW and channels_last at the shape it sees for
    ``example_input`` and set each ``FastBlock`` to the faster format. Returns {block name: format}."""
    shapes: dict[str, tuple] = {}

    def record(name: str):
        def hook(module, args) -> None:
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [
        m.register_forward_pre_hook(record(name))
        for name, m in fast.named_modules() if isinstance(m, FastBlock) and m.dw_weight is not None
    ]
    try:
        with torch.inference_mode():
            fast(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    blocks = dict(fast.named_modules())
    decided: dict[tuple, bool] = {}
    choice = {}
    for name, shape in shapes.items():
        block: FastBlock = blocks[name]
        key = (shape, block.kernel_size)
        if key not in decided:
            x = torch.randn(shape, device=example_input.device, dtype=example_input.dtype)
            timings = {}
            for first in (True, False):
                block.dw_channels_first = first
                timings[first] = _median_seconds(block._dwconv, (x,), repeats)
            decided[key] = min(timings, key=timings.get)
        block.dw_channels_first = decided[key]
        choice[name] = "nchw" if decided[key] else "channels_last"
    return choice


def optimize_for_inference(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    candidates: tuple[str, ...] = CANDIDATES,
    repeats: int = 3,
    rtol: float = 1e-4,
) -> nn.Module:
    """Return the fastest equivalent inference model for the device ``model`` is on (``model`` is untouched).

    The copy is re-parameterized and rebuilt as ``FastUniRepLKNet`` (see the module docstring). With an
    ``example_input``: each depthwise conv's memory format is chosen by timing, then the candidates ("eager",
    "compile", "compile_frozen": see ``compile_model``) are timed and the fastest is returned, after checking
    that its output equals the eval-mode original within ``rtol`` x max|output|; ``model.inference_choice``
    records the choices.
    Without one, the eager fast model with the default format (channels_last depthwise convs) is returned.
    """
    unknown = set(candidates) - set(CANDIDATES)
    if unknown or not candidates:
        raise ValueError(f"candidates must be drawn from {CANDIDATES}, got {tuple(candidates)}")
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a tensor, got {type(example_input).__name__}")
    was_training = model.training
    fast = to_fast_model(model)
    if example_input is None:
        return fast
    with torch.inference_mode():
        reference = model.eval()(example_input)
    model.train(was_training)
    formats = choose_dw_formats(fast, example_input, repeats)
    options = {name: compile_model(fast, name) for name in CANDIDATES if name in candidates}
    timings = {name: _median_seconds(m, (example_input,), repeats) for name, m in options.items()}
    best = min(timings, key=timings.get)
    chosen = options[best]
    with torch.inference_mode():
        out = chosen(example_input)
    err = (out - reference).abs().max().item()
    if err > rtol * reference.abs().max().item():
        raise RuntimeError(f"optimized model ({best}) differs from the original by {err:.3g}; please report this")
    chosen.inference_choice = {"chosen": best, "seconds": timings, "dw_formats": formats}
    return chosen


__all__ = ["compile_model", "FastBlock", "FastDownsample", "FastUniRepLKNet", "optimize_for_inference", "to_fast_model"]
