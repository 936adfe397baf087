"""Per-modality throughput on the mini presets: each DataModule's train loader alone vs the training step.

Loading must not be the bottleneck of a run: the loader should deliver at least twice the samples per second
that the training step (forward, backward, optimizer step) consumes. For every modality this composes the
config ``experiments/run.py modality=<m>`` would run (Hydra compose, same DataModule and task), then

- iterates the train loader alone (its configured workers; the first batch, which starts them, is not timed);
- runs ``--batches`` training steps through a Lightning Trainer, timing each step from batch start to batch
  end (the wait for the next batch is excluded), after ``--warmup`` untimed steps.

    python experiments/benchmark.py modalities                        # every modality, 2 threads
    python experiments/benchmark.py modalities --modalities audio,image --batches 20
    python experiments/benchmark_modalities.py --modalities video     # the same, standalone
    python experiments/benchmark.py modalities --modalities audio --speed default,channels_last,compile,bf16

``--speed`` times the training step once per training-speed variant (``SPEED_VARIANTS``: the harness's
``speed.channels_last`` / ``speed.compile`` and Lightning's bf16 autocast), one Trainer after the other, each
with the same seed, batches and warm-up steps (a compiled step's compilation falls in the warm-up), and reports
each variant's step rate over the default's.

Writes ``modalities.csv`` and ``modalities.md`` under --out and prints the table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from experiments import harness

REPO_ROOT = Path(__file__).resolve().parents[1]
# the loader must deliver at least this many times the samples per second the training step consumes
REQUIRED_HEADROOM = 2.0
# training-speed variants: name -> run.py overrides
SPEED_VARIANTS = {
    "default": [],
    "channels_last": ["speed.channels_last=true"],
    "compile": ["speed.compile=true"],
    "channels_last+compile": ["speed.channels_last=true", "speed.compile=true"],
    "bf16": ["trainer.precision=bf16-mixed"],
}


def compose_modality(modality: str, overrides: list[str] | None = None, run_dir: Path | None = None) -> DictConfig:
    """The config of ``experiments/run.py modality=<modality> <overrides>`` (relative paths at the repo root)."""
    valid = harness.group_options("modality")
    if modality not in valid:
        raise ValueError(f"unknown modality {modality!r}; valid choices: {', '.join(valid)}")
    with initialize_config_dir(str(harness.CONFIG_DIR), version_base="1.3", job_name="benchmark"):
        cfg = compose(
            "train", overrides=[f"paths.root_dir={REPO_ROOT}", f"modality={modality}", *(overrides or [])],
            return_hydra_config=True,
        )
    run_dir = run_dir or REPO_ROOT / "runs" / "benchmarks" / "modalities" / modality
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _batch_size(batch) -> int:
    target = batch[1] if isinstance(batch, (tuple, list)) else batch
    return len(target)


def loader_throughput(loader, batches: int) -> tuple[float, int]:
    """Samples per second of ``loader`` alone over ``batches`` batches (after one untimed batch)."""
    iterator = iter(loader)
    next(iterator)  # starts the workers
    samples, elapsed, taken = 0, 0.0, 0
    while taken < batches:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:  # a small mini split: start another epoch
            iterator = iter(loader)
            continue
        elapsed += time.perf_counter() - start
        samples += _batch_size(batch)
        taken += 1
    return samples / elapsed, samples


class StepTimer(L.Callback):
    """Times each training step from batch start to batch end (forward, backward, optimizer step)."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.times: list[float] = []
        self.samples: list[int] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._start)
            self.samples.append(_batch_size(batch))


def step_throughput(cfg: DictConfig, datamodule, task, batches: int, warmup: int) -> float:
    """Samples per second of the training step (median step time), through a Lightning Trainer."""
    timer = StepTimer(warmup)
    trainer = instantiate(
        cfg.trainer, callbacks=[timer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_epochs=1, min_epochs=1, max_steps=-1,
        limit_train_batches=warmup + batches, limit_val_batches=0, num_sanity_val_steps=0, fast_dev_run=False,
    )
    trainer.fit(task, datamodule=datamodule)
    if not timer.times:
        raise RuntimeError(f"no training step was timed (the train loader has fewer than {warmup + 1} batches)")
    return statistics.median(timer.samples) / statistics.median(timer.times)


def benchmark_modality(modality: str, batches: int = 10, warmup: int = 2, overrides: list[str] | None = None) -> dict:
    """Loader and training-step throughput of one modality's mini preset."""
    cfg = compose_modality(modality, overrides)
    harness.check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # builds the mini dataset on first use
    datamodule.setup("fit")
    loader_rate, _ = loader_throughput(datamodule.train_dataloader(), batches)
    task = harness.build_task(cfg, datamodule)
    harness.check_task_fits_data(task, datamodule)
    harness.apply_speed(task, cfg.get("speed"))
    step_rate = step_throughput(cfg, datamodule, task, batches, warmup)
    choices = HydraConfig.get().runtime.choices
    return {
        "modality": modality,
        "data": choices.get("data"),
        "backbone": cfg.backbone.name,
        "batch_size": cfg.data.get("batch_size"),
        "num_workers": cfg.data.get("num_workers"),
        "loader_samples_per_s": loader_rate,
        "step_samples_per_s": step_rate,
        "loader_over_step": loader_rate / step_rate,
        "loader_ok": loader_rate >= REQUIRED_HEADROOM * step_rate,
    }


def run_modalities(args) -> pd.DataFrame:
    """The ``modalities`` subcommand of experiments/benchmark.py: every requested modality, one table."""
    modalities = args.modalities or harness.group_options("modality")
    unknown = [v for v in args.speed if v not in SPEED_VARIANTS]
    if unknown:
        raise ValueError(f"unknown --speed variant(s) {unknown}; valid: {', '.join(SPEED_VARIANTS)}")
    rows = []
    for modality in modalities:
        for variant in args.speed:
            print(f"[{modality}, {variant}] loader and training step ...", flush=True)
            try:
                row = benchmark_modality(modality, args.batches, args.warmup,
                                         [*args.override, *SPEED_VARIANTS[variant]])
            except Exception as error:  # one variant failing (e.g. a compiler error) is a result, not the end
                print(f"[{modality}, {variant}] failed: {type(error).__name__}: {str(error)[:300]}", flush=True)
                row = {"step_samples_per_s": float("nan"), "error": f"{type(error).__name__}: {str(error)[:200]}"}
            rows.append({"modality": modality, "speed": variant} | row)
    df = pd.DataFrame(rows)
    default = df[df.speed == args.speed[0]].set_index("modality")["step_samples_per_s"]
    df[f"step_over_{args.speed[0]}"] = df.step_samples_per_s / df.modality.map(default)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "modalities.csv", index=False)
    lines = [
        f"# Loader vs training step on the mini presets ({args.batches} timed batches, "
        f"{torch.get_num_threads()} threads, medians of step times)",
        "",
        f"The loader should deliver >= {REQUIRED_HEADROOM:g}x what the training step consumes (loader_ok).",
        "",
        df.to_markdown(index=False, floatfmt=".3g"),
    ]
    (out / "modalities.md").write_text("\n".join(lines) + "\n")
    print((out / "modalities.md").read_text())
    return df


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modalities", type=lambda s: s.split(","), default=None,
                        help="comma list (default: every experiments/configs/modality option)")
    parser.add_argument("--batches", type=int, default=10, help="timed batches (loader) and steps (training)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speed", type=lambda s: s.split(","), default=["default"],
                        help=f"training-speed variants, the first is the reference: {', '.join(SPEED_VARIANTS)}")
    parser.add_argument("--override", nargs="*", default=[],
                        help="run.py overrides for every modality, e.g. experiment=imagenet1k_table14 data.root=...")
    parser.add_argument("--out", default="runs/benchmarks")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_modalities(args)


if __name__ == "__main__":
    main()
