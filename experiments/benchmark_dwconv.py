"""The large depthwise convolutions, the part of UniRepLKNet that ConvNeXt V2 does not have: every exact way to
compute them, timed side by side on this CPU at the shapes a model runs.

    python experiments/benchmark.py dwconv --models unireplknet_a,unireplknet_n --batch-size 32

For each distinct depthwise conv of the model's deploy structure at ``--resolution`` (found by forward hooks:
channels, map size, kernel, how many blocks share it), the candidates are:

- ``onednn_nchw`` / ``onednn_channels_last``: ``F.conv2d(groups=C)`` on a contiguous / channels_last input
  (oneDNN's direct depthwise kernels; what the fast path chooses between per layer);
- ``im2col_gemm``: ``F.unfold`` to K*K shifted copies, then one product per channel with its K*K taps, one sample
  at a time (the unfolded batch of a 13 x 13 stage-1 map would not fit in memory);
- ``fft``: real 2-D FFTs of the zero-padded map and kernel, a pointwise product, the inverse (exact up to float
  rounding, O(log) instead of O(K^2) per pixel, so it can only pay for the largest kernels and maps).

(A 13 x 13 kernel split into a row and a column pass is not equivalent to it and is not a candidate.)
Every candidate's output is compared with ``onednn_nchw`` (max error relative to the output's largest magnitude;
above 1e-4 it is marked inexact and never chosen). Candidates run round-robin, medians of ``--repeats``; the table
gives ms per batch per layer, the fastest exact candidate, and per model the depthwise total of each candidate
and of the per-layer best. Written to ``<out>/dwconv.csv`` and ``dwconv.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

import core
from experiments.benchmark import machine_info

TOLERANCE = 1e-4


def dw_shapes(model_name: str, resolution: int) -> list[dict]:
    """Distinct depthwise convs (C, H, W, K) of a model's deploy structure, with how many layers have each."""
    model = core.create_backbone(model_name, num_classes=0).eval()
    core.reparameterize(model)
    found: dict[tuple, dict] = {}

    def hook(module, inputs, _output):
        x = inputs[0]
        key = (x.shape[1], x.shape[2], x.shape[3], module.kernel_size[0])
        if key in found:
            found[key]["layers"] += 1
        else:
            found[key] = {"model": model_name, "channels": key[0], "height": key[1], "width": key[2],
                          "kernel": key[3], "layers": 1, "weight": module.weight.detach().clone()}

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1 and m.kernel_size[0] > 1]
    with torch.no_grad():
        model(torch.randn(1, 3, resolution, resolution))
    for handle in handles:
        handle.remove()
    return list(found.values())


def im2col_gemm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    k = weight.shape[-1]
    taps = weight.reshape(c, k * k, 1)
    out = x.new_empty(b, c, h * w)
    for i in range(b):  # one sample at a time: the whole batch unfolded is K*K times the input
        cols = F.unfold(x[i:i + 1], k, padding=k // 2).view(c, k * k, h * w)
        out[i] = (cols * taps).sum(dim=1)
    return out.view(b, c, h, w)


def fft_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    _, _, h, w = x.shape
    k = weight.shape[-1]
    size = (h + k - 1, w + k - 1)  # linear (not circular) correlation fits in this size
    spectrum = torch.fft.rfft2(x, s=size)
    kernel = torch.fft.rfft2(weight[:, 0].flip(-2, -1), s=size)  # conv2d correlates: flip to convolve
    full = torch.fft.irfft2(spectrum * kernel, s=size)
    pad = k // 2  # output pixel i of the correlation is pixel i + pad of the full convolution
    return full[..., pad:pad + h, pad:pad + w].contiguous()


def candidates(weight: torch.Tensor) -> dict:
    groups = weight.shape[0]
    pad = weight.shape[-1] // 2
    return {
        "onednn_nchw": (lambda x: F.conv2d(x, weight, padding=pad, groups=groups), torch.contiguous_format),
        "onednn_channels_last": (lambda x: F.conv2d(x, weight, padding=pad, groups=groups), torch.channels_last),
        "im2col_gemm": (lambda x: im2col_gemm(x, weight), torch.contiguous_format),
        "fft": (lambda x: fft_conv(x, weight), torch.contiguous_format),
    }


def time_shape(shape: dict, batch_size: int, repeats: int, warmup: int) -> list[dict]:
    weight = shape["weight"]
    x = torch.randn(batch_size, shape["channels"], shape["height"], shape["width"])
    cands = candidates(weight)
    inputs = {name: x.contiguous(memory_format=fmt) for name, (_, fmt) in cands.items()}
    with torch.no_grad():
        reference = cands["onednn_nchw"][0](x)
        scale = reference.abs().max().item()
        errors = {name: (fn(inputs[name]) - reference).abs().max().item() / scale for name, (fn, _) in cands.items()}
        times = {name: [] for name in cands}
        for round_ in range(warmup + repeats):
            for name, (fn, _) in cands.items():
                start = time.perf_counter()
                fn(inputs[name])
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - start)
    rows = []
    for name in cands:
        rows.append({key: shape[key] for key in ("model", "channels", "height", "width", "kernel", "layers")}
                    | {"candidate": name, "ms": 1e3 * statistics.median(times[name]),
                       "rel_error": errors[name], "exact": errors[name] <= TOLERANCE})
    return rows


def run_dwconv(args) -> pd.DataFrame:
    rows = []
    for model_name in args.models:
        for shape in dw_shapes(model_name, args.resolution):
            rows += time_shape(shape, args.batch_size, args.repeats, args.warmup)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "dwconv.csv", index=False)
    (out / "dwconv.md").write_text(report(df, args))
    return df


def report(df: pd.DataFrame, args) -> str:
    keys = ["model", "channels", "height", "width", "kernel", "layers"]
    table = df.pivot_table(index=keys, columns="candidate", values="ms").reset_index()
    exact = df[df.exact]
    best = exact.loc[exact.groupby(keys)["ms"].idxmin(), keys + ["candidate", "ms"]]
    table = table.merge(best.rename(columns={"candidate": "fastest_exact", "ms": "best_ms"}), on=keys)
    totals = []
    for model, part in table.groupby("model"):
        total = {"model": model}
        for name in df.candidate.unique():
            total[name] = (part[name] * part["layers"]).sum()
        total["per_layer_best"] = (part["best_ms"] * part["layers"]).sum()
        totals.append(total)
    errors = df.groupby("candidate")["rel_error"].max().rename("max_rel_error").reset_index()
    machine = ", ".join(f"{k}: {v}" for k, v in machine_info(args.threads, "cpu").items())
    return "\n".join([
        f"# Depthwise convolutions: batch {args.batch_size}, {args.resolution} px, {args.threads} threads, "
        f"medians of {args.repeats} interleaved rounds, ms per batch per layer",
        "", f"Machine: {machine}", "", table.to_markdown(index=False, floatfmt=".3g"), "",
        "## Per model: depthwise ms per batch (every layer, layers x ms)", "",
        pd.DataFrame(totals).to_markdown(index=False, floatfmt=".4g"), "",
        "## Largest error relative to the output's largest magnitude", "",
        errors.to_markdown(index=False, floatfmt=".2g"), ""])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=lambda s: s.split(","), default=["unireplknet_a", "unireplknet_n"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default="runs/benchmarks")
