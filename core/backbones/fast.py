"""The fast inference path: ``optimize_for_inference(model, example_input)`` returns an equivalent model that
runs faster on the device at hand.

``FastUniRepLKNet`` is an inference-only rebuild of a re-parameterized ``UniRepLKNet``:

- the residual stream is kept in NHWC (channels last), where the FFN is one plain matrix product over all
  pixels and the stem / downsampling LayerNorms are ordinary last-dimension LayerNorms;
- each depthwise conv runs in NCHW or channels_last (``FastBlock.dw_channels_first``), and the SE scale is
  applied in the pass that writes the NHWC FFN input;
- SE works on B x C vectors with plain matrix products;
- the first FFN product and its GELU run as one of ``LINEAR_GELU_FORMS`` (oneDNN's Linear or 1x1 convolution
  with GELU in the epilogue, or a plain Linear followed by GELU), the GRN norms as one of ``GRN_NORM_FORMS``,
  and the per-sample GRN scale either folded into a per-sample copy of the output weight or applied to the
  hidden map (``GRN_SCALE_FORMS``); the output product is accumulated straight into the residual sum:

      SE:   W1 (s * y)                = W1 (y')  with y' written once, already scaled, in NHWC
      GRN:  W2 ((1 + g Nx) * h) + b2  = (W2 * (1 + g Nx)) h + b2,  accumulated into (x + b2)

Every form is exact algebra, so all of them give the eval-mode training structure's outputs to float32
round-off; which one is fastest depends on the machine and the layer shape. Without an example input the
defaults need no measurement (channels_last depthwise convs, the fused Linear, a sum of squares, the GRN scale
folded into whichever operand is smaller). With one, ``optimize_for_inference`` times each form per distinct
block shape (``choose_dw_formats``, ``choose_ffn_forms``), then the candidates "eager", "compile" and
"compile_frozen" of the fast structure (``compile_model``) and "deploy_compile" / "deploy_compile_frozen", the
plain re-parameterized structure in channels_last compiled (``ChannelsLastDeploy``, for CPUs where Inductor's own
fusions beat the hand-fused oneDNN forms): each one is checked against the original on the example and on a batch
one larger, a candidate that fails to build, compile, run or match is dropped (``inference_choice["rejected"]``
says why), and the fastest of the rest is returned. Under ``torch.compile`` the forward uses only layout-explicit,
out-of-place operations, so it compiles for either depthwise format and recompiles for new batch and input
sizes. Measurements behind these choices: docs/performance.md.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from core.backbones.dense import DenseUniRepLKNet
from core.backbones.factory import reparameterize
from core.backbones.layers import SEBlock
from core.backbones.unireplknet import DilatedReparamBlock, UniRepLKNet, UniRepLKNetBlock

CANDIDATES = ("eager", "compile", "compile_frozen", "deploy_compile", "deploy_compile_frozen")
# candidates built from FastUniRepLKNet; the "deploy_" ones compile the plain re-parameterized structure instead
FAST_CANDIDATES = ("eager", "compile", "compile_frozen")
LINEAR_GELU_FORMS = ("fused_linear", "fused_conv1x1", "linear_then_gelu")
GRN_NORM_FORMS = ("square_sum", "vector_norm")
GRN_SCALE_FORMS = ("auto", "weight", "map")
_MKLDNN = torch.backends.mkldnn.is_available()
_MKLDNN_DTYPES = (torch.float32, torch.bfloat16)


def _onednn_fusable(x: torch.Tensor) -> bool:
    """Whether the fused oneDNN forms of ``LINEAR_GELU_FORMS`` apply to ``x`` (in eager mode)."""
    return _MKLDNN and x.device.type == "cpu" and x.dtype in _MKLDNN_DTYPES


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """``model`` as run by a candidate mode: "eager" (itself), "compile" (``torch.compile``) or
    "compile_frozen" (``torch.compile`` with Inductor's freezing: weights become constants, so on CPU the convs
    and Linears are lowered to oneDNN with pre-packed weights and fused epilogues; inference only).

    ``torch.compile`` runs with its default ``dynamic=None``: the first call compiles for its shapes, a call with
    a new batch or input size recompiles once with those sizes symbolic."""
    if mode == "eager":
        return model
    if mode == "compile":
        return torch.compile(model)
    if mode == "compile_frozen":
        return torch.compile(model, options={"freezing": True})
    raise ValueError(f"unknown mode {mode!r}; valid choices: {', '.join(FAST_CANDIDATES)}")


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=False)


class FastBlock(nn.Module):
    """Inference-only UniRepLKNet block on an NHWC (B x H x W x C) residual stream.

    Built from a re-parameterized ``UniRepLKNetBlock``. Forms, all giving the same outputs (``choose_dw_formats``
    and ``choose_ffn_forms`` set them by timing):

    - ``dw_channels_first``: the depthwise conv in NCHW instead of channels_last;
    - ``linear_gelu_form`` (``LINEAR_GELU_FORMS``): the first FFN product with its GELU; the fused oneDNN forms
      apply in eager mode to float32 / bfloat16 CPU tensors, anything else (and ``torch.compile``, which fuses
      the GELU itself) runs "linear_then_gelu";
    - ``grn_norm_form`` (``GRN_NORM_FORMS``): the GRN L2 norms over the pixels;
    - ``grn_scale_form`` (``GRN_SCALE_FORMS``): the per-sample GRN scale folded into a per-sample copy of the
      output weight ("weight"), applied to the hidden map ("map"), or whichever of the two is smaller ("auto").
    """

    def __init__(self, block: UniRepLKNetBlock, dw_channels_first: bool | None = None):
        super().__init__()
        if not block.deployed:
            raise ValueError("FastBlock needs a re-parameterized block (call reparameterize() first)")
        if not isinstance(block.se, SEBlock):
            raise ValueError(
                f"the fast inference path implements the published block (SE Block); a block with "
                f"extra_structure={block.extra_structure!r} (a Table 1 ablation) runs with the model itself"
            )
        conv = block.dwconv.lk_origin if isinstance(block.dwconv, DilatedReparamBlock) else block.dwconv
        self.kernel_size = block.kernel_size
        if isinstance(conv, nn.Conv2d):
            self.dw_weight = _frozen(conv.weight)  # C x 1 x K x K
            self.dw_bias = _frozen(conv.bias)
        else:  # K = 0: no spatial conv
            self.dw_weight = self.dw_bias = None
        self.dw_channels_first = bool(dw_channels_first)
        self.linear_gelu_form, self.grn_norm_form, self.grn_scale_form = "fused_linear", "square_sum", "auto"
        se = block.se
        self.se_w1, self.se_b1 = _frozen(se.down.weight.flatten(1)), _frozen(se.down.bias)  # C/4 x C
        self.se_w2, self.se_b2 = _frozen(se.up.weight.flatten(1)), _frozen(se.up.bias)  # C x C/4
        linear1, linear2 = block.pwconv1[1], block.pwconv2[0]
        self.w1, self.b1 = _frozen(linear1.weight), _frozen(linear1.bias)  # 4C x C
        self.w2t, self.b2 = _frozen(linear2.weight.t()), _frozen(linear2.bias)  # 4C x C (transposed), C
        self.grn_gamma = _frozen(block.act[1].gamma.flatten())  # 4C

    def _dwconv(self, x: torch.Tensor, channels_first: bool | None = None) -> torch.Tensor:
        """B x H x W x C -> the depthwise conv output as a B x C x H x W tensor, run in NCHW if ``channels_first``
        (default: ``dw_channels_first``), else in channels_last."""
        k = self.kernel_size
        channels_first = self.dw_channels_first if channels_first is None else channels_first
        nchw = x.permute(0, 3, 1, 2)  # a channels_last view of NHWC memory
        nchw = nchw.contiguous() if channels_first else nchw.contiguous(memory_format=torch.channels_last)
        return F.conv2d(nchw, self.dw_weight, self.dw_bias, padding=k // 2, groups=self.dw_weight.shape[0])

    def _se_scale(self, y: torch.Tensor) -> torch.Tensor:
        """B x C x H x W -> the B x C SE scale."""
        pooled = y.mean(dim=(2, 3))
        return torch.sigmoid(F.linear(F.relu(F.linear(pooled, self.se_w1, self.se_b1)), self.se_w2, self.se_b2))

    @staticmethod
    def _scaled_nhwc(y: torch.Tensor, scale: torch.Tensor, eager: bool) -> torch.Tensor:
        """y * scale (B x C x H x W in any memory format, B x C) as an NHWC-contiguous B x H x W x C tensor."""
        b, c, h, w = y.shape
        y, scale = y.permute(0, 2, 3, 1), scale.view(b, 1, 1, c)
        if eager:  # one pass that reads y in its own order and writes a tensor allocated NHWC-contiguous
            return torch.mul(y, scale, out=torch.empty((b, h, w, c), dtype=y.dtype, device=y.device))
        return (y * scale).contiguous()

    def _linear_gelu(self, ys: torch.Tensor, form: str) -> torch.Tensor:
        """GELU(ys W1^T + b1) for an NHWC-contiguous B x H x W x C map, as a contiguous (B H W) x 4C matrix."""
        b, h, w, c = ys.shape
        if form not in LINEAR_GELU_FORMS:
            raise ValueError(f"unknown linear_gelu_form {form!r}; valid choices: {', '.join(LINEAR_GELU_FORMS)}")
        if form != "linear_then_gelu" and not _onednn_fusable(ys):
            form = "linear_then_gelu"
        if form == "fused_linear":
            return torch.ops.mkldnn._linear_pointwise(ys.reshape(b * h * w, c), self.w1, self.b1, "gelu", [], "none")
        if form == "fused_conv1x1":  # the NCHW view of NHWC memory is a channels_last input of a 1x1 conv
            out = torch.ops.mkldnn._convolution_pointwise(
                ys.permute(0, 3, 1, 2), self.w1.view(self.w1.shape[0], c, 1, 1), self.b1,
                [0, 0], [1, 1], [1, 1], 1, "gelu", [], "none",
            )
            return out.permute(0, 2, 3, 1).reshape(b * h * w, self.w1.shape[0])  # a view when channels_last
        out = F.linear(ys.reshape(b * h * w, c), self.w1, self.b1)  # "linear_then_gelu"
        return F.gelu(out) if torch.compiler.is_compiling() else torch._C._nn.gelu_(out)

    @staticmethod
    def _grn_norms(hidden: torch.Tensor, form: str) -> torch.Tensor:
        """B x P x 4C -> the B x 4C L2 norms over the P pixels."""
        if form == "square_sum":
            return hidden.square().sum(dim=1).sqrt()
        if form == "vector_norm":
            return torch.linalg.vector_norm(hidden, ord=2, dim=1)
        raise ValueError(f"unknown grn_norm_form {form!r}; valid choices: {', '.join(GRN_NORM_FORMS)}")

    def _grn_scale(self, gx: torch.Tensor) -> torch.Tensor:
        """B x 4C norms -> the B x 4C per-sample GRN scale 1 + gamma Nx."""
        return torch.addcmul(torch.ones_like(gx), self.grn_gamma, gx / (gx.mean(dim=1, keepdim=True) + 1e-6))

    def _ffn_out(self, x: torch.Tensor, hidden: torch.Tensor, grn: torch.Tensor, form: str, eager: bool):
        """x + b2 + (grn * hidden) W2 for the B x H x W x C residual x, the B x P x 4C hidden map and the
        B x 4C GRN scale, as an NHWC-contiguous B x H x W x C tensor."""
        b, h, w, c = x.shape
        p, c4 = h * w, hidden.shape[2]
        if form == "auto":  # the per-sample weight (4C x C) is smaller than the hidden map (P x 4C)
            form = "weight" if c < p else "map"
        if form not in ("weight", "map"):
            raise ValueError(f"unknown grn_scale_form {form!r}; valid choices: {', '.join(GRN_SCALE_FORMS)}")
        res = (x.reshape(b, p, c) + self.b2).contiguous()  # a new tensor: the output is accumulated into it
        if form == "weight":
            weight = self.w2t * grn.view(b, c4, 1)
            out = res.baddbmm_(hidden, weight) if eager else torch.baddbmm(res, hidden, weight)
        else:
            scaled = (hidden * grn.view(b, 1, c4)).reshape(b * p, c4)
            res = res.view(b * p, c)
            out = res.addmm_(scaled, self.w2t) if eager else torch.addmm(res, scaled, self.w2t)
        return out.view(b, h, w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # eager: oneDNN's fused forms, writes into explicitly allocated tensors; torch.compile: plain out-of-place
        # operations with explicit layouts (is_compiling() is a constant to Dynamo)
        eager = not torch.compiler.is_compiling()
        b, h, w, c = x.shape
        y = self._dwconv(x) if self.dw_weight is not None else x.permute(0, 3, 1, 2)  # B x C x H x W
        ys = self._scaled_nhwc(y, self._se_scale(y), eager)  # the FFN input: B x H x W x C
        hidden = self._linear_gelu(ys, self.linear_gelu_form if eager else "linear_then_gelu")
        hidden = hidden.reshape(b, h * w, self.w1.shape[0])  # B x P x 4C (a view)
        grn = self._grn_scale(self._grn_norms(hidden, self.grn_norm_form))
        return self._ffn_out(x, hidden, grn, self.grn_scale_form, eager)


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
    """Inference-only UniRepLKNet: NHWC residual stream, per-layer forms of the blocks (see ``FastBlock``).

    Same outputs as the eval-mode ``UniRepLKNet`` it was built from (``forward``, ``forward_features``,
    ``forward_head``); built by ``to_fast_model``.
    """

    def __init__(self, model: UniRepLKNet):
        super().__init__()
        model = self._build_body(model)
        self.num_classes, self.num_features, self.global_pool = model.num_classes, model.num_features, model.global_pool
        self.norm, self.head = model.norm, model.head
        for p in self.parameters():
            p.requires_grad_(False)

    def _build_body(self, model: UniRepLKNet) -> UniRepLKNet:
        """Set the fast stem, downsampling layers and stages from a re-parameterized copy of ``model`` (returned)."""
        model = copy.deepcopy(model).eval().reparameterize()
        self.in_chans = model.in_chans
        self.downsample_layers = nn.ModuleList(FastDownsample(layers) for layers in model.downsample_layers)
        self.stages = nn.ModuleList(nn.Sequential(*(FastBlock(b) for b in stage)) for stage in model.stages)
        return model

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # its own code object (not UniRepLKNet.forward), so torch.compile's per-function cache and recompile
        # limit are not shared with compiled training models
        return self.forward_head(self.forward_features(x))


class FastDenseUniRepLKNet(FastUniRepLKNet):
    """Inference-only ``DenseUniRepLKNet``: the fast stages, then each returned stage's LayerNorm on its NHWC map.

    Same outputs (the list of NCHW stage maps) as the eval-mode dense model it was built from.
    """

    def __init__(self, model: DenseUniRepLKNet):
        nn.Module.__init__(self)
        model = self._build_body(model)
        self.out_indices = model.out_indices
        self.norms = nn.ModuleList()
        for i in model.out_indices:
            norm = getattr(model, f"norm{i}")
            self.norms.append(nn.LayerNorm(norm.normalized_shape, eps=norm.eps).to(norm.weight.device))
            self.norms[-1].load_state_dict(norm.state_dict())
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check_input(x)
        x = self.downsample_layers[0](x, nhwc_input=False)
        outs = []
        for i in range(self.out_indices[-1] + 1):
            x = self.stages[i](x if i == 0 else self.downsample_layers[i](x))
            if i in self.out_indices:
                outs.append(self.norms[self.out_indices.index(i)](x).permute(0, 3, 1, 2))
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError("FastDenseUniRepLKNet returns the stage maps: call it directly")


def _fast(model: UniRepLKNet) -> FastUniRepLKNet:
    return FastDenseUniRepLKNet(model) if isinstance(model, DenseUniRepLKNet) else FastUniRepLKNet(model)


def to_fast_model(model: nn.Module) -> nn.Module:
    """The fast inference structure of ``model`` (a copy; ``model`` is untouched).

    A ``UniRepLKNet`` becomes a ``FastUniRepLKNet`` (a ``DenseUniRepLKNet`` a ``FastDenseUniRepLKNet``); in any
    other model (e.g. a task or a detector wrapping a backbone) every such submodule is replaced. The result is
    in eval mode with frozen parameters.
    """
    if isinstance(model, UniRepLKNet):
        return _fast(model)
    model = copy.deepcopy(model).eval()
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, UniRepLKNet):
                setattr(parent, name, _fast(child))
                replaced += 1
    if not replaced:
        raise TypeError(f"{type(model).__name__} contains no UniRepLKNet; nothing to optimize")
    return model


class ChannelsLastDeploy(nn.Module):
    """The re-parameterized training structure with its weights and its input in channels_last: what Inductor
    optimizes as it does ConvNeXt V2 (LayerNorm, GELU, GRN and residual fused into its own kernels, and with
    freezing the convs and Linears lowered to oneDNN with pre-packed weights). The "deploy_compile" candidates."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = reparameterize(copy.deepcopy(model).eval()).to(memory_format=torch.channels_last)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor):
        return self.model(x.contiguous(memory_format=torch.channels_last))


def _build_candidate(name: str, fast: nn.Module, model: nn.Module) -> nn.Module:
    if name in FAST_CANDIDATES:
        return compile_model(fast, name)
    return compile_model(ChannelsLastDeploy(model), name.removeprefix("deploy_"))


def _round_robin_seconds(calls: dict[str, tuple], repeats: int) -> tuple[dict[str, float], dict[str, Exception]]:
    """Median wall seconds of each {name: (function, arguments)} call, timed in interleaved rounds (one call of
    each per round, after one untimed call each), so that a change of the machine's load hits every one alike.
    Returns (seconds, errors): a call that raises is left out of the timing, its exception is in errors."""
    times: dict[str, list[float]] = {}
    errors: dict[str, Exception] = {}

    def run(name: str) -> float | None:
        fn, args = calls[name]
        start = time.perf_counter()
        try:
            fn(*args)
        except Exception as error:  # reported to the caller
            errors[name] = error
            times.pop(name, None)
            return None
        return time.perf_counter() - start

    with torch.inference_mode():
        for name in calls:  # warm-up (and compilation)
            if run(name) is not None:
                times[name] = []
        for _ in range(repeats):
            for name in list(times):
                seconds = run(name)
                if seconds is not None:
                    times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}, errors


def _block_input_shapes(fast: nn.Module, example_input: torch.Tensor) -> dict[str, tuple]:
    """{name: B x H x W x C input shape} of every ``FastBlock`` of ``fast`` for ``example_input``."""
    shapes: dict[str, tuple] = {}

    def record(name: str):
        def hook(module, args) -> None:
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in fast.named_modules() if isinstance(m, FastBlock)]
    try:
        with torch.inference_mode():
            fast(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def _fastest(calls: dict[str, tuple], repeats: int) -> str:
    """The name of the fastest {name: (function, arguments)} call; a form that raises is skipped."""
    seconds, errors = _round_robin_seconds(calls, repeats)
    if not seconds:
        raise RuntimeError(f"none of the forms {list(calls)} runs: {errors}")
    return min(seconds, key=seconds.get)


def choose_dw_formats(fast: nn.Module, example_input: torch.Tensor, repeats: int = 3) -> dict[str, str]:
    """Time every distinct depthwise conv of ``fast`` in NCHW and channels_last at the shape it sees for
    ``example_input`` and set each ``FastBlock`` to the faster format. Returns {block name: format}."""
    blocks = dict(fast.named_modules())
    decided: dict[tuple, bool] = {}
    choice = {}
    for name, shape in _block_input_shapes(fast, example_input).items():
        block: FastBlock = blocks[name]
        if block.dw_weight is None:
            continue
        key = (shape, block.kernel_size)
        if key not in decided:
            x = torch.randn(shape, device=example_input.device, dtype=example_input.dtype)
            decided[key] = _fastest({True: (block._dwconv, (x, True)), False: (block._dwconv, (x, False))}, repeats)
        block.dw_channels_first = decided[key]
        choice[name] = "nchw" if decided[key] else "channels_last"
    return choice


def choose_ffn_forms(fast: nn.Module, example_input: torch.Tensor, repeats: int = 3) -> dict[str, dict[str, str]]:
    """Time the FFN forms of every distinct ``FastBlock`` shape of ``fast`` for ``example_input`` in eager mode
    (``LINEAR_GELU_FORMS``, ``GRN_NORM_FORMS``, "weight" / "map" of ``GRN_SCALE_FORMS``) and set each block to
    the fastest of each. Returns {block name: {"linear_gelu": form, "grn_norm": form, "grn_scale": form}}."""
    blocks = dict(fast.named_modules())
    decided: dict[tuple, dict[str, str]] = {}
    choice = {}
    kw = {"device": example_input.device, "dtype": example_input.dtype}
    for name, shape in _block_input_shapes(fast, example_input).items():
        block: FastBlock = blocks[name]
        if shape not in decided:
            b, h, w, c = shape
            with torch.inference_mode():
                ys, x = torch.randn(shape, **kw), torch.randn(shape, **kw)
                linear_forms = LINEAR_GELU_FORMS if _onednn_fusable(ys) else ("linear_then_gelu",)
                linear = _fastest({f: (block._linear_gelu, (ys, f)) for f in linear_forms}, repeats)
                hidden = block._linear_gelu(ys, linear).reshape(b, h * w, block.w1.shape[0])
                norm = _fastest({f: (block._grn_norms, (hidden, f)) for f in GRN_NORM_FORMS}, repeats)
                grn = block._grn_scale(block._grn_norms(hidden, norm))
                scale = _fastest({f: (block._ffn_out, (x, hidden, grn, f, True)) for f in ("weight", "map")}, repeats)
            decided[shape] = {"linear_gelu": linear, "grn_norm": norm, "grn_scale": scale}
        forms = decided[shape]
        block.linear_gelu_form, block.grn_norm_form, block.grn_scale_form = (
            forms["linear_gelu"], forms["grn_norm"], forms["grn_scale"])
        choice[name] = dict(forms)
    return choice


def _max_error(got, expected) -> tuple[float, float]:
    """(max |got - expected|, max |expected|) over a tensor or a (nested) tuple / list / dict of tensors."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ValueError(f"output shape {shape}, expected {tuple(expected.shape)}")
        err = (got.float() - expected.float()).abs().max().item() if expected.numel() else 0.0
        return err, (expected.float().abs().max().item() if expected.numel() else 0.0)
    if isinstance(expected, (tuple, list)) and isinstance(got, (tuple, list)) and len(got) == len(expected):
        pairs = list(zip(got, expected))
    elif isinstance(expected, dict) and isinstance(got, dict) and got.keys() == expected.keys():
        pairs = [(got[k], expected[k]) for k in expected]
    else:
        raise ValueError(f"output of type {type(got).__name__}, expected {type(expected).__name__}")
    errs = [_max_error(g, e) for g, e in pairs]
    return max((e for e, _ in errs), default=0.0), max((m for _, m in errs), default=0.0)


class _Mismatch(RuntimeError):
    pass


def _check(fn, references: list[tuple[torch.Tensor, object]], rtol: float) -> None:
    """Raise unless ``fn`` reproduces every (input, reference output) pair within ``rtol`` x max|reference|."""
    for x, expected in references:
        with torch.inference_mode():
            got = fn(x)
        err, scale = _max_error(got, expected)
        if not err <= rtol * scale:  # also catches NaN
            raise _Mismatch(
                f"output differs from the original by {err:.3g} (> {rtol:g} x max|output| = {rtol * scale:.3g}) "
                f"at input shape {tuple(x.shape)}"
            )


def _reason(error: Exception) -> str:
    """A one-line account of why a candidate failed."""
    if isinstance(error, _Mismatch):
        return f"mismatch: {error}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " | ".join(lines[:3])
    return f"{type(error).__name__}: {text[:400]}{'...' if len(text) > 400 else ''}"


def optimize_for_inference(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    candidates: tuple[str, ...] = CANDIDATES,
    repeats: int = 3,
    rtol: float = 1e-4,
) -> nn.Module:
    """Return the fastest equivalent inference model for the device ``model`` is on (``model`` is untouched).

    The copy is re-parameterized and rebuilt as ``FastUniRepLKNet`` (see the module docstring). Without an
    ``example_input`` it is returned as is, with the default forms.

    With one: the depthwise conv formats and FFN forms are chosen per block shape by timing; every candidate
    ("eager", "compile", "compile_frozen": see ``compile_model``) is built, checked against the eval-mode
    original on ``example_input`` and on a batch one larger (within ``rtol`` x max|output|), and the survivors
    are timed on ``example_input`` in ``repeats`` interleaved rounds. A candidate that fails to build, compile,
    run or match is dropped with a warning; the fastest of the rest is returned. If none is left, the eager fast
    model is returned when it matches (with ``"fallback": True``); otherwise a ``RuntimeError`` names every
    reason. The returned model's ``inference_choice`` records "chosen", "seconds", "rejected" ({candidate:
    reason}), "fallback", "dw_formats", "ffn_forms" and "checked_shapes".

    A compiled model recompiles for batch and input sizes it has not seen (up to Dynamo's
    ``recompile_limit`` per forward; past it Dynamo runs the forward eagerly, with the same outputs).
    """
    unknown = set(candidates) - set(CANDIDATES)
    if unknown or not candidates:
        raise ValueError(f"candidates must be drawn from {CANDIDATES}, got {tuple(candidates)}")
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a tensor, got {type(example_input).__name__}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    fast = to_fast_model(model)
    if example_input is None:
        return fast
    # another batch size: torch.compile specializes on the first shapes it sees and must recompile correctly
    other = torch.cat([example_input, example_input[:1]])
    was_training = model.training
    try:
        with torch.inference_mode():
            model.eval()
            references = [(x, model(x)) for x in (example_input, other)]
    finally:
        model.train(was_training)
    # the first call of a compiled candidate compiles with a symbolic batch size where it can (a batch of 1 is
    # specialized), so the other batch size reuses the graph instead of recompiling; a copy is marked
    first = example_input.clone()
    torch._dynamo.maybe_mark_dynamic(first, 0)
    checks = [(first, references[0][1]), references[1]]
    formats = choose_dw_formats(fast, example_input, repeats)
    forms = choose_ffn_forms(fast, example_input, repeats)
    built, rejected = {}, {}

    def reject(name: str, error: Exception) -> None:
        rejected[name] = _reason(error)
        warnings.warn(f"optimize_for_inference: dropped candidate {name!r}: {rejected[name]}", RuntimeWarning,
                      stacklevel=3)

    for name in (c for c in CANDIDATES if c in candidates):
        try:
            candidate = _build_candidate(name, fast, model)
            _check(candidate, checks, rtol)  # compiles (and recompiles if the other batch size needs it)
            built[name] = candidate
        except Exception as error:  # any failure drops the candidate, with its reason
            reject(name, error)
    seconds, errors = _round_robin_seconds({name: (m, (example_input,)) for name, m in built.items()}, repeats)
    for name, error in errors.items():
        reject(name, error)
        del built[name]
    fallback = not built
    if fallback:
        if "eager" in rejected:
            raise RuntimeError(f"optimize_for_inference: every candidate failed: {rejected}")
        try:
            _check(fast, checks, rtol)
        except Exception as error:
            raise RuntimeError(
                f"optimize_for_inference: every candidate failed ({rejected}) and so does the eager fast model: "
                f"{_reason(error)}"
            ) from error
        built["eager"] = fast
        best = "eager"
    else:
        best = min(seconds, key=seconds.get)
    chosen = built[best]
    chosen.inference_choice = {
        "chosen": best, "seconds": seconds, "rejected": rejected, "fallback": fallback,
        "dw_formats": formats, "ffn_forms": forms, "checked_shapes": [tuple(x.shape) for x, _ in references],
    }
    return chosen


__all__ = [
    "CANDIDATES", "ChannelsLastDeploy", "GRN_NORM_FORMS", "GRN_SCALE_FORMS", "LINEAR_GELU_FORMS",
    "choose_dw_formats", "choose_ffn_forms", "compile_model", "FastBlock", "FastDenseUniRepLKNet", "FastDownsample",
    "FastUniRepLKNet", "optimize_for_inference", "to_fast_model",
]
