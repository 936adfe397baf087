"""Benchmark suite: backbone throughput side by side (Table 6 style) and per-modality loader vs training step.

    python experiments/benchmark.py backbones                      # A/F/P/N vs ConvNeXt V2 A/F/P/N, 2 threads
    python experiments/benchmark.py backbones --models unireplknet_a:fast,convnextv2_atto --modes eager,compile
    python experiments/benchmark.py modalities --modalities audio,image
    python experiments/benchmark.py profile --models unireplknet_n:fast/eager,convnextv2_nano:train/compile
    python experiments/benchmark.py dwconv --models unireplknet_a,unireplknet_n   # every exact depthwise method

All candidates of a run are measured interleaved (round-robin over repeats), so the machine's drift hits them
alike; medians and ratios to a reference are reported, with the achieved FLOP/s as a fraction of this machine's
dense matrix-multiply rate measured in the same run. Results go to a CSV and a markdown table (with the
machine and library versions) under --out.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import core
from core.backbones.fast import compile_model, to_fast_model

# The paper's Table 6 pairs: UniRepLKNet variant -> ConvNeXt V2 counterpart.
PAIRS = {
    "unireplknet_a": "convnextv2_atto",
    "unireplknet_f": "convnextv2_femto",
    "unireplknet_p": "convnextv2_pico",
    "unireplknet_n": "convnextv2_nano",
    "unireplknet_t": "convnextv2_tiny",
}
# the instruction-set extensions that decide which oneDNN / Inductor kernels a CPU gets
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16")
DEFAULT_MODELS = [f"{u}:{s}" for u in list(PAIRS)[:4] for s in ("deploy", "fast")] + list(PAIRS.values())[:4]


@dataclass
class Candidate:
    label: str  # e.g. "unireplknet_a:fast/eager/nchw/fp32"
    model_name: str
    structure: str
    mode: str
    memory_format: str
    dtype: str
    fn: object = None
    params_m: float = 0.0
    gmacs: float = 0.0
    times: list = field(default_factory=list)
    cpu_times: list = field(default_factory=list)  # process CPU seconds per batch (all threads)


def build_model(name: str, structure: str) -> torch.nn.Module:
    """A backbone in a given structure: train (as trained), deploy (re-parameterized), fast (FastUniRepLKNet)."""
    if name in core.list_backbones():
        model = core.create_backbone(name, num_classes=1000)
    else:
        model = timm.create_model(name, num_classes=1000)  # e.g. the ConvNeXt V2 references
    model.eval()
    if structure == "deploy":
        core.reparameterize(model)
    elif structure == "fast":
        model = to_fast_model(model)
    elif structure != "train":
        raise ValueError(f"structure must be train, deploy or fast; got {structure!r}")
    return model


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds of one forward pass (torch's FLOP counter counts 2 FLOPs per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x[:1])
    return counter.get_total_flops() / 2 * x.shape[0]


def matmul_peak(device: str, dtype: torch.dtype, size: int = 2048):
    """A dense size^3 GEMM as a timing candidate: this machine's practical FLOP/s limit."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b)), 2.0 * size**3


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine_info(threads: int, device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    isa = "n/a"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name") and cpu == (platform.processor() or platform.machine()):
            cpu = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            isa = " ".join(sorted(f for f in flags if f in ISA_FLAGS)) or "none of " + " ".join(ISA_FLAGS)
            break
    info = {
        "cpu": cpu, "isa": isa, "threads": threads, "device": device, "python": platform.python_version(),
        "torch": torch.__version__, "timm": timm.__version__, "onednn": torch.backends.mkldnn.is_available(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    if hasattr(os, "getloadavg"):  # other processes' load at the end of the run (1, 5, 15 min)
        info["load_average"] = "/".join(f"{v:.2f}" for v in os.getloadavg())
    return info


def run_backbones(args) -> pd.DataFrame:
    torch.manual_seed(0)
    load_at_start = "/".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    device = args.device
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    x_fp32 = torch.randn(args.batch_size, 3, args.resolution, args.resolution, device=device)
    candidates: list[Candidate] = []
    for spec in args.models:
        name, _, rest = spec.partition(":")
        structure, *pinned = rest.split("/") if rest else [""]
        structure = structure or ("deploy" if name.startswith("unireplknet") else "train")
        modes = [pinned[0]] if pinned and pinned[0] else args.modes  # name:structure/mode/format pins them
        formats = [pinned[1]] if len(pinned) > 1 and pinned[1] else args.formats
        base = build_model(name, structure).to(device)
        params = sum(p.numel() for p in base.parameters()) / 1e6
        # the fast structure does the deploy structure's arithmetic, partly in fused oneDNN ops the counter misses
        macs = count_macs(build_model(name, "deploy").to(device) if structure == "fast" else base, x_fp32)
        for fmt in formats:
            for dt in args.dtypes:
                for mode in modes:
                    model = copy.deepcopy(base).to(dtype=dtypes[dt])
                    if fmt == "channels_last":
                        model = model.to(memory_format=torch.channels_last)
                    fn = compile_model(model, mode)
                    candidates.append(Candidate(
                        f"{name}:{structure}/{mode}/{fmt}/{dt}", name, structure, mode, fmt, dt, fn, params, macs
                    ))
    peaks = {dt: matmul_peak(device, dtypes[dt]) for dt in args.dtypes}
    peak_times = {dt: [] for dt in args.dtypes}

    def inputs_for(c: Candidate) -> torch.Tensor:
        x = x_fp32.to(dtype=dtypes[c.dtype])
        return x.contiguous(memory_format=torch.channels_last) if c.memory_format == "channels_last" else x

    with torch.inference_mode():
        for c in candidates:  # warm-up, compilation
            for _ in range(args.warmup):
                c.fn(inputs_for(c))
        for r in range(args.repeats):
            for c in candidates:
                x = inputs_for(c)
                sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                c.fn(x)
                sync(device)
                c.times.append(time.perf_counter() - start)
                c.cpu_times.append(time.process_time() - cpu_start)
            for dt, (fn, _) in peaks.items():
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                peak_times[dt].append(time.perf_counter() - start)
            print(f"round {r + 1}/{args.repeats} done", flush=True)

    peak_flops = {dt: peaks[dt][1] / statistics.median(t) for dt, t in peak_times.items()}
    rows = []
    for c in candidates:
        med = statistics.median(c.times)
        rows.append({
            "model": c.model_name, "structure": c.structure, "mode": c.mode, "memory_format": c.memory_format,
            "dtype": c.dtype, "params_M": round(c.params_m, 2), "GMACs": round(c.gmacs / args.batch_size / 1e9, 3),
            "samples_per_s": args.batch_size / med, "median_s": med,
            "cpu_s_per_batch": statistics.median(c.cpu_times),
            "flops_fraction_of_gemm_peak": 2 * c.gmacs / med / peak_flops[c.dtype],
        })
    df = pd.DataFrame(rows)
    # each model at its own fastest configuration, then ratios to its reference (Table 6 pairs)
    best = df.loc[df.groupby(["model", "structure"])["samples_per_s"].idxmax()].copy()
    reference_rate = {}
    for _, row in best.iterrows():
        if row["model"] not in PAIRS and row["model"] in PAIRS.values():
            reference_rate[row["model"]] = row["samples_per_s"]
    best["reference"] = best["model"].map(PAIRS)
    best["ratio_to_reference"] = best.apply(
        lambda r: r["samples_per_s"] / reference_rate[r["reference"]] if r["reference"] in reference_rate else None,
        axis=1,
    )
    # the same ratio in process CPU time: robust to other processes taking the cores (time-sharing), though not
    # to the cache pollution and thread-synchronisation stalls they also cause
    reference_cpu = {
        row["model"]: row["cpu_s_per_batch"] for _, row in best.iterrows() if row["model"] in reference_rate
    }
    best["cpu_ratio_to_reference"] = best.apply(
        lambda r: reference_cpu[r["reference"]] / r["cpu_s_per_batch"] if r["reference"] in reference_cpu else None,
        axis=1,
    )
    df.attrs["best"] = best
    df.attrs["peak_gflops"] = {k: v / 1e9 for k, v in peak_flops.items()}
    df.attrs["load_at_start"] = load_at_start
    return df


def write_backbone_report(df: pd.DataFrame, args) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "backbones_all.csv", index=False)
    best = df.attrs["best"]
    best.to_csv(out / "backbones_best.csv", index=False)
    info = machine_info(args.threads, args.device)
    lines = [
        f"# Backbone throughput (batch {args.batch_size}, {args.resolution}x{args.resolution}, "
        f"{args.repeats} interleaved rounds, medians)",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items())
        + f" (load average at the start: {df.attrs.get('load_at_start', 'n/a')})",
        "Dense GEMM limit measured in the same run: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in df.attrs["peak_gflops"].items()),
        "",
        "## Each model at its fastest configuration (Table 6 layout)",
        "",
        best[["model", "structure", "mode", "memory_format", "dtype", "params_M", "GMACs", "samples_per_s",
              "reference", "ratio_to_reference", "cpu_ratio_to_reference", "flops_fraction_of_gemm_peak"]]
        .to_markdown(index=False, floatfmt=".3g"),
        "",
        "## Every configuration",
        "",
        df[["model", "structure", "mode", "memory_format", "dtype", "samples_per_s", "cpu_s_per_batch",
            "flops_fraction_of_gemm_peak"]].to_markdown(index=False, floatfmt=".3g"),
    ]
    path = out / "backbones.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    bb = sub.add_parser("backbones", help="throughput of backbones side by side")
    bb.add_argument("--models", type=lambda s: s.split(","), default=DEFAULT_MODELS,
                    help="comma list of name[:structure[/mode[/format]]], structure in train/deploy/fast; a "
                         "mode / format given there replaces --modes / --formats for that model")
    bb.add_argument("--modes", type=lambda s: s.split(","), default=["eager"],
                    help="any of eager,compile,compile_frozen (Inductor freezing: constant weights)")
    bb.add_argument("--formats", type=lambda s: s.split(","), default=["nchw"], help="nchw,channels_last")
    bb.add_argument("--dtypes", type=lambda s: s.split(","), default=["fp32"], help="fp32,bf16")
    bb.add_argument("--device", default="cpu")
    bb.add_argument("--batch-size", type=int, default=32)
    bb.add_argument("--resolution", type=int, default=224)
    bb.add_argument("--threads", type=int, default=2)
    bb.add_argument("--repeats", type=int, default=7)
    bb.add_argument("--warmup", type=int, default=2)
    bb.add_argument("--out", default="runs/benchmarks")
    md = sub.add_parser("modalities", help="per-modality loader and training-step throughput on the mini presets")
    from experiments.benchmark_modalities import add_arguments

    add_arguments(md)
    pr = sub.add_parser("profile", help="torch.profiler self CPU time per kind of operation, models side by side")
    from experiments.benchmark_profile import add_arguments as add_profile_arguments

    add_profile_arguments(pr)
    dw = sub.add_parser("dwconv", help="the depthwise convs of a model: oneDNN in both layouts, im2col + GEMM, FFT")
    from experiments.benchmark_dwconv import add_arguments as add_dwconv_arguments

    add_dwconv_arguments(dw)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.command == "backbones":
        df = run_backbones(args)
        path = write_backbone_report(df, args)
        print(path.read_text())
    elif args.command == "profile":
        from experiments.benchmark_profile import run_profile

        print(run_profile(args, build_model))
    elif args.command == "dwconv":
        from experiments.benchmark_dwconv import run_dwconv

        run_dwconv(args)
        print((Path(args.out) / "dwconv.md").read_text())
    else:
        from experiments.benchmark_modalities import run_modalities

        run_modalities(args)


if __name__ == "__main__":
    main()
