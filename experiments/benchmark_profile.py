"""Where the time goes: torch.profiler self CPU time of backbones, grouped by kind of operation.

    python experiments/benchmark.py profile --models unireplknet_n:fast/eager,convnextv2_nano:train/compile

Each model (``name[:structure[/mode]]``, structures and modes as in ``benchmark.py backbones``) is warmed up
(compiled), then ``--repeats`` batches are profiled; the self CPU time of every operator is summed into the
groups of ``GROUPS`` (convolutions split by their weight's shape into depthwise and dense) and reported per
batch, side by side, as a markdown table (also written to ``<out>/profile.md`` with the raw per-operator CSV).
The profiler hands out per-operator totals only; the grouping of oneDNN / Inductor kernels is ours.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

from core.backbones.fast import compile_model

PRODUCTS = "matrix products (FFN as Linear or 1x1 conv, SE, head)"
INDUCTOR = "Inductor fused kernels (element-wise, norms, reductions)"
# group -> operator-name fragments (first match wins; checked in this order)
GROUPS = (
    (INDUCTOR, ("cpp_fused", "kernel_cpp")),
    (PRODUCTS, ("addmm", "aten::mm", "bmm", "linear_pointwise", "mkldnn_linear", "mkl_linear", "_mkl_",
                "aten::linear")),
    ("convolution", ("conv",)),  # split below by the weight's shape
    ("GELU", ("gelu",)),
    ("LayerNorm", ("layer_norm",)),
    ("norms / reductions (GRN, SE pooling)", ("norm", "mean", "sum", "sqrt")),
    ("layout copies", ("copy_", "contiguous", "clone", "permute")),
)
OTHER = "other element-wise"


def op_group(name: str, input_shapes) -> str:
    """The group of one profiled operator (by name; convolutions by their weight's shape)."""
    lowered = name.lower()
    if lowered.startswith(("torch-compiled region", "compiledfunction")) or "compiledfxgraph" in lowered:
        # Inductor's generated C++ kernels are not profiled one by one: their time is the self time of the
        # compiled-graph wrappers (the extern oneDNN / GEMM calls inside are separate operators)
        return INDUCTOR
    for group, fragments in GROUPS:
        if any(fragment in lowered for fragment in fragments):
            if group == "convolution":
                weight = input_shapes[1] if input_shapes and len(input_shapes) > 1 else []
                if len(weight) == 4 and weight[2:] == [1, 1]:  # a 1x1 conv is a matrix product (ConvNeXt V2's FFN)
                    return PRODUCTS
                return "depthwise conv" if len(weight) == 4 and weight[1] == 1 else "dense conv (stem, downsampling)"
            return group
    return OTHER


def profile_model(fn, x: torch.Tensor, repeats: int) -> pd.DataFrame:
    """Per-operator self CPU seconds per batch of ``fn(x)`` (``repeats`` profiled batches)."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(repeats):
            fn(x)
    rows = [
        {"op": e.key, "input_shapes": str(e.input_shapes), "group": op_group(e.key, e.input_shapes),
         "self_cpu_s": e.self_cpu_time_total / 1e6 / repeats, "calls": e.count / repeats}
        for e in prof.key_averages(group_by_input_shape=True)
    ]
    return pd.DataFrame(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=lambda s: s.split(","),
                        default=["unireplknet_n:fast/eager", "convnextv2_nano:train/compile"],
                        help="comma list of name[:structure[/mode]]")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="profiled batches per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="runs/benchmarks/profile")


def run_profile(args, build_model: Callable[[str, str], torch.nn.Module]) -> str:
    """Profile ``args.models``, each built by ``build_model(name, structure)`` (``experiments.benchmark``'s)."""

    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution)
    tables, raw = {}, []
    for spec in args.models:
        name, _, rest = spec.partition(":")
        structure, _, mode = rest.partition("/")
        structure = structure or ("deploy" if name.startswith("unireplknet") else "train")
        mode = mode or "eager"
        fn = compile_model(build_model(name, structure), mode)
        with torch.inference_mode():
            for _ in range(args.warmup):
                fn(x)
        ops = profile_model(fn, x, args.repeats).assign(model=f"{name}:{structure}/{mode}")
        raw.append(ops)
        tables[f"{name}:{structure}/{mode}"] = ops.groupby("group")["self_cpu_s"].sum()
    table = pd.DataFrame(tables).fillna(0.0)
    table.loc["total"] = table.sum()
    shares = table.div(table.loc["total"], axis=1)
    shown = table.map(lambda v: f"{v:.3f}").astype(str) + shares.map(lambda v: f" ({100 * v:.0f} %)").astype(str)
    text = (f"Self CPU seconds per batch of {args.batch_size} at {args.resolution} x {args.resolution} "
            f"({args.threads} threads; share of the total):\n\n" + shown.to_markdown())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.md").write_text(text + "\n")
    pd.concat(raw).to_csv(out / "profile_ops.csv", index=False)
    return text
