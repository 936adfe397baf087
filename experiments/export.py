"""Export the deploy (re-parameterized) model to TorchScript and ONNX, and check the exports against eager.

    python experiments/export.py runs/audio/unireplknet_test/<time>/checkpoints/deploy.pt   # a run's task
    python experiments/export.py <run dir> --formats onnx --out exports/
    python experiments/export.py --backbone unireplknet_a --input-shape 1,3,224,224           # a bare backbone

A checkpoint (deploy.pt, best.ckpt or a run directory; see experiments/predict.py) exports the whole task
(adapter + backbone) with one test batch of the run's DataModule as the example input. ``--backbone`` exports a
freshly built backbone in its deploy structure (``--weights`` loads a published or saved state dict first).

Each export is verified: the TorchScript module is loaded back and run; the ONNX graph is checked with
``onnx.checker`` and run with onnxruntime (CPU execution provider). ``--speed N`` also times eager PyTorch and
onnxruntime side by side on the example (N interleaved repeats each, medians and their ratio).

    python experiments/export.py --backbone unireplknet_a --input-shape 8,3,224,224 --speed 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import core

FORMATS = ("torchscript", "onnx")
OPSET = 17


@contextlib.contextmanager
def _traceable(model: nn.Module):
    """Let the tracer walk LightningModules: their ``trainer`` property raises when no Trainer is attached,
    except while ``_jit_is_scripting`` is set (what ``LightningModule.to_torchscript`` does)."""
    flagged = [m for m in model.modules() if hasattr(m, "_jit_is_scripting")]
    for m in flagged:
        m._jit_is_scripting = True
    try:
        yield model
    finally:
        for m in flagged:
            m._jit_is_scripting = False


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Trace ``model`` (eval mode) on ``example`` and save it; returns the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings(), _traceable(model):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the input-shape checks become constants
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
    traced.save(str(path))
    return path


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = OPSET) -> Path:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch axis (TorchScript-based exporter)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings(), _traceable(model):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model.eval(), (example,), str(path), input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=opset, dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def run_torchscript(path: str | Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.jit.load(str(path))(x)


def onnx_session(path: str | Path):
    """An onnxruntime session for the exported graph (CPU execution provider)."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(path: str | Path, x: torch.Tensor) -> np.ndarray:
    """Outputs of the ONNX model, run with onnxruntime."""
    return onnx_session(path).run(None, {"input": x.detach().cpu().numpy()})[0]


def measure_speed(model: nn.Module, onnx_path: str | Path, example: torch.Tensor, repeats: int = 10) -> dict:
    """Median seconds per call of eager PyTorch and of onnxruntime on ``example``, timed interleaved (one call of
    each per round, after one warm-up call), and onnxruntime's speed-up over eager."""
    session, feeds = onnx_session(onnx_path), {"input": example.numpy()}
    runners = {"eager": lambda: model(example), "onnxruntime": lambda: session.run(None, feeds)}
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for name, run in runners.items():
            run()
        for _ in range(repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
    eager, ort = statistics.median(seconds["eager"]), statistics.median(seconds["onnxruntime"])
    return {"batch": example.shape[0], "threads": torch.get_num_threads(), "repeats": repeats,
            "eager_s": eager, "onnxruntime_s": ort, "onnxruntime_speedup": eager / ort}


def max_relative_error(got, expected: torch.Tensor) -> float:
    got = torch.as_tensor(np.asarray(got)) if not isinstance(got, torch.Tensor) else got
    return float((got.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-12))


def deploy_backbone(name: str, in_chans: int = 3, num_classes: int = 1000, weights: str | None = None) -> nn.Module:
    """A backbone from the factory, weights loaded if given, in eval mode and deploy structure."""
    model = core.create_backbone(name, in_chans=in_chans, num_classes=num_classes)
    if weights:
        core.load_checkpoint(model, weights)
    return core.reparameterize(model.eval())


def deploy_task_and_example(checkpoint: str | Path, overrides: list[str] | None = None):
    """A run's task in deploy structure and one test batch of its DataModule as the example input."""
    from hydra.utils import instantiate

    from experiments.predict import load_deploy_task, load_run_config, resolve_checkpoint

    path, run_dir = resolve_checkpoint(checkpoint)
    cfg = load_run_config(run_dir, overrides=overrides)
    task = load_deploy_task(cfg, path)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    inputs = next(iter(datamodule.test_dataloader()))[0]
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"the {cfg.modality.name} inputs are a {type(inputs).__name__}, not one tensor; "
                        "export the backbone alone (--backbone) instead")
    return task, inputs, run_dir


def export_and_verify(
    model: nn.Module,
    example: torch.Tensor,
    out_dir: str | Path,
    name: str = "model",
    formats: tuple[str, ...] = FORMATS,
    rtol: float = 1e-4,
    speed_repeats: int = 0,
) -> dict:
    """Write ``<out_dir>/<name>.pt`` / ``.onnx`` and compare each export's output with eager on ``example``."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; choose from {FORMATS}")
    out_dir = Path(out_dir)
    model = model.eval()
    with torch.no_grad():
        expected = model(example)
    report: dict = {}
    if "torchscript" in formats:
        path = export_torchscript(model, example, out_dir / f"{name}.pt")
        report["torchscript"] = {"path": str(path), "max_rel_error": max_relative_error(run_torchscript(path, example), expected)}
    if "onnx" in formats:
        path = export_onnx(model, example, out_dir / f"{name}.onnx")
        entry = {"path": str(path), "checker": "passed",
                 "max_rel_error": max_relative_error(run_onnx(path, example), expected)}
        if speed_repeats:
            entry["speed"] = measure_speed(model, path, example, speed_repeats)
        report["onnx"] = entry
    for fmt, entry in report.items():
        if entry.get("max_rel_error", 0.0) > rtol:
            raise RuntimeError(f"{fmt} export differs from eager by {entry['max_rel_error']:.3g} (relative)")
    return report


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--input-shape must be comma-separated integers like 1,3,224,224, got {text!r}") from None
    if len(shape) != 4 or min(shape) <= 0:
        raise ValueError(f"--input-shape must be B,C,H,W with positive sizes, got {text!r}")
    return shape


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="deploy.pt, a Lightning .ckpt, or a run directory")
    parser.add_argument("--backbone", help="export this backbone (core.list_backbones()) instead of a run's task")
    parser.add_argument("--weights", help="with --backbone: a state dict / published checkpoint to load")
    parser.add_argument("--input-shape", default="1,3,224,224", help="with --backbone: B,C,H,W of the example")
    parser.add_argument("--num-classes", type=int, default=1000, help="with --backbone: head size (0: features)")
    parser.add_argument("--formats", type=lambda s: tuple(s.split(",")), default=FORMATS)
    parser.add_argument("--override", nargs="*", default=[], help="run config overrides key=value")
    parser.add_argument("--out", default=None, help="output directory (default: <run dir>/export or exports/)")
    parser.add_argument("--speed", type=int, default=0, metavar="N",
                        help="time eager and onnxruntime on the example, N interleaved repeats each")
    args = parser.parse_args(argv)
    if bool(args.checkpoint) == bool(args.backbone):
        parser.error("give a checkpoint (or run directory) or --backbone NAME, not both")
    if args.backbone:
        shape = parse_shape(args.input_shape)
        model = deploy_backbone(args.backbone, shape[1], args.num_classes, args.weights)
        example, name = torch.randn(shape), args.backbone
        out = Path(args.out or "exports")
    else:
        model, example, run_dir = deploy_task_and_example(args.checkpoint, args.override)
        name, out = "deploy", Path(args.out or run_dir / "export")
    report = export_and_verify(model, example, out, name, args.formats, speed_repeats=args.speed)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
