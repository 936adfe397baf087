"""The fast inference path: ``optimize_for_inference(model)`` returns the fastest equivalent model.

Why hand-written: neither timm nor torch ships this. Profiling the deploy structure on a CPU (torch.profiler,
batch 32 at 224) shows most time outside the depthwise convs: in the two Linear layers of the FFN, in the
NCHW <-> NHWC copies around them, and in the element-wise passes of SE and GRN over the 4C-wide hidden map.
The fast block keeps every tensor in NCHW (the layout where the large depthwise convs are fastest here) and
writes the FFN as batched matrix products on the B x C x (H*W) view, so no permute copies remain. SE and GRN
produce one scale per (sample, channel); where the weight matrix is smaller than the feature map (early stages,
large H*W) the scale is folded into a per-sample copy of the next weight matrix instead of multiplying the map:

    SE:   W1 (s * y)  = (W1 * s) y        GRN:  W2 ((1 + g Nx) * h) = (W2 * (1 + g Nx)) h

Everything is exact algebra, so outputs equal the eval-mode training structure to float32 round-off.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from core.backbones.unireplknet import DilatedReparamBlock, UniRepLKNet, UniRepLKNetBlock


class FastBlock(nn.Module):
    """Inference-only UniRepLKNet block in NCHW, built from a re-parameterized ``UniRepLKNetBlock``."""

    def __init__(self, block: UniRepLKNetBlock):
        super().__init__()
        if not block.deployed:
            raise ValueError("FastBlock needs a re-parameterized block (call reparameterize() first)")
        conv = block.dwconv.lk_origin if isinstance(block.dwconv, DilatedReparamBlock) else block.dwconv
        self.dwconv = conv  # a biased depthwise conv, or Identity for K = 0
        self.se = block.se
        linear1, linear2 = block.pwconv1[1], block.pwconv2[0]
        self.w1 = nn.Parameter(linear1.weight.detach().clone(), requires_grad=False)  # 4C x C
        self.b1 = nn.Parameter(linear1.bias.detach().clone().view(1, -1, 1), requires_grad=False)
        self.w2 = nn.Parameter(linear2.weight.detach().clone(), requires_grad=False)  # C x 4C
        self.b2 = nn.Parameter(linear2.bias.detach().clone().view(1, -1, 1), requires_grad=False)
        self.grn_gamma = nn.Parameter(block.act[1].gamma.detach().clone().view(1, -1, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hw = h * w
        y = self.dwconv(x)
        scale = torch.sigmoid(self.se.up(F.relu(self.se.down(y.mean(dim=(2, 3), keepdim=True)))))  # B x C x 1 x 1
        y = y.reshape(b, c, hw)
        w1 = self.w1.unsqueeze(0)
        if 4 * c < hw:  # fold the SE scale into a per-sample W1 (cheaper than scaling the map)
            hidden = torch.baddbmm(self.b1, w1 * scale.view(b, 1, c), y)  # B x 4C x HW
        else:
            hidden = torch.baddbmm(self.b1, w1.expand(b, -1, -1), y * scale.view(b, c, 1))
        hidden = F.gelu(hidden)
        gx = torch.linalg.vector_norm(hidden, ord=2, dim=2, keepdim=True)  # GRN: B x 4C x 1
        grn = 1 + self.grn_gamma * (gx / (gx.mean(dim=1, keepdim=True) + 1e-6))
        w2 = self.w2.unsqueeze(0)
        if c < hw:
            out = torch.baddbmm(self.b2, w2 * grn.view(b, 1, -1), hidden)  # B x C x HW
        else:
            out = torch.baddbmm(self.b2, w2.expand(b, -1, -1), hidden * grn)
        return x + out.view(b, c, h, w)


def to_fast_blocks(model: nn.Module) -> nn.Module:
    """Re-parameterize ``model`` in place and swap every block for a ``FastBlock``."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, UniRepLKNetBlock):
                child.reparameterize()
                setattr(parent, name, FastBlock(child))
    return model


def _median_seconds(fn, x: torch.Tensor, repeats: int) -> float:
    times = []
    with torch.inference_mode():
        fn(x)  # warm-up (and compilation)
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def optimize_for_inference(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    candidates: tuple[str, ...] = ("eager", "compile"),
    repeats: int = 3,
    rtol: float = 1e-4,
) -> nn.Module:
    """Return the fastest equivalent inference model for the device ``model`` is on (``model`` is untouched).

    The copy is put in eval mode and re-parameterized; UniRepLKNet blocks become ``FastBlock``s. With an
    ``example_input`` the candidates ("eager", "compile" = torch.compile) are timed on it and the fastest is
    returned, after checking its output equals the eval-mode original within ``rtol`` x max|output|.
    Without one, the eager fast model is returned.
    """
    unknown = set(candidates) - {"eager", "compile"}
    if unknown or not candidates:
        raise ValueError(f"candidates must be drawn from ('eager', 'compile'), got {candidates}")
    fast = to_fast_blocks(copy.deepcopy(model).eval())
    if example_input is None:
        return fast
    with torch.inference_mode():
        reference = model.eval()(example_input)
    options = {}
    if "eager" in candidates:
        options["eager"] = fast
    if "compile" in candidates:
        options["compile"] = torch.compile(fast)
    timings = {name: _median_seconds(m, example_input, repeats) for name, m in options.items()}
    best = min(timings, key=timings.get)
    chosen = options[best]
    with torch.inference_mode():
        out = chosen(example_input)
    err = (out - reference).abs().max().item()
    if err > rtol * reference.abs().max().item():
        raise RuntimeError(f"optimized model ({best}) differs from the original by {err:.3g}; please report this")
    chosen.inference_choice = {"chosen": best, "seconds": timings}
    return chosen


__all__ = ["FastBlock", "UniRepLKNet", "optimize_for_inference", "to_fast_blocks"]
