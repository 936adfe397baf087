"""Helpers the notebooks (notebooks/*.ipynb) share: find or train a run, load it back, predict, plot.

    from experiments import explore
    run_dir = explore.ensure_run("audio")     # latest completed run under runs/audio/, trained (mini budget) if none
    run = explore.load_run(run_dir)           # its config, results record, task (best checkpoint), data, metrics

``NOTEBOOK_QUICK=1`` (the test suite sets it) makes ``ensure_run`` train a few-batch run in a temporary directory
instead, so every notebook executes in seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from core.tasks.builders import import_object
from experiments.harness import CONFIG_DIR, RESULTS_FILE

REPO_ROOT = CONFIG_DIR.parents[1]
RUNS_DIR = REPO_ROOT / "runs"
# one short epoch (three training batches, one of each evaluation loop): seconds on a CPU, still a checkpoint,
# a metrics.csv and a results.json like a real run's
QUICK_OVERRIDES = ("trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
                   "trainer.limit_test_batches=1", "trainer.log_every_n_steps=1", "data.num_workers=0")
# the CPU budget of the mini sweeps (experiments/configs/sweep/mini_budget.yaml): a couple of minutes
FULL_OVERRIDES = ("sweep=mini_budget", "trainer.log_every_n_steps=5")


def quick_mode() -> bool:
    """True when the environment asks for the few-batch version (``NOTEBOOK_QUICK=1``)."""
    return os.environ.get("NOTEBOOK_QUICK", "").lower() not in ("", "0", "false", "no")


def compose_run_config(overrides: list[str] | tuple[str, ...], run_dir: str | os.PathLike) -> DictConfig:
    """The config ``experiments/run.py <overrides>`` would run (data under the repository), writing to run_dir."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name="notebook"):
        cfg = compose("train", overrides=[f"paths.root_dir={REPO_ROOT}", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def train_run(overrides: list[str] | tuple[str, ...], run_dir: str | os.PathLike) -> Path:
    """Train, test and deploy-test one run in-process (as experiments/run.py does); returns its directory."""
    from experiments.run import train

    run_dir = Path(run_dir)
    train(compose_run_config([*overrides, "trainer.enable_progress_bar=false"], run_dir))
    return run_dir


def completed_runs(root: str | os.PathLike, modality: str | None = None) -> list[Path]:
    """Run directories below ``root`` whose results.json is complete (and of ``modality``), oldest first."""
    found = []
    for path in Path(root).rglob(RESULTS_FILE):
        record = json.loads(path.read_text())
        if record.get("status", "completed") == "completed" and modality in (None, record.get("modality")):
            if (path.parent / "checkpoints" / "best.ckpt").is_file():
                found.append((record.get("finished", ""), path.parent))
    return [run_dir for _, run_dir in sorted(found)]


def ensure_run(modality: str, overrides: list[str] | tuple[str, ...] = (), runs_root: str | os.PathLike | None = None,
               quick: bool | None = None) -> Path:
    """A trained run of ``modality``: in quick mode a fresh few-batch run in a temporary directory; otherwise the
    latest completed single run under ``runs/<modality>/``, or a new one trained at the mini budget."""
    quick = quick_mode() if quick is None else quick
    if quick:
        run_dir = Path(tempfile.mkdtemp(prefix=f"notebook_{modality}_"))
        return train_run([f"modality={modality}", *QUICK_OVERRIDES, *overrides], run_dir)
    root = Path(runs_root) if runs_root is not None else RUNS_DIR
    existing = completed_runs(root / modality, modality) if not overrides else []
    if existing:
        return existing[-1]
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return train_run([f"modality={modality}", *FULL_OVERRIDES, *overrides], root / modality / "notebook" / stamp)


@dataclass
class Run:
    """A finished run loaded back: resolved config, results.json, task in eval mode, DataModule, metrics.csv."""

    run_dir: Path
    cfg: DictConfig
    record: dict
    task: torch.nn.Module
    datamodule: object
    metrics: pd.DataFrame


def load_run(run_dir: str | os.PathLike, checkpoint: str = "best") -> Run:
    """Load ``run_dir``: the task from ``checkpoints/<checkpoint>.ckpt`` and the DataModule from its config."""
    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    record = json.loads((run_dir / RESULTS_FILE).read_text())
    if record.get("data_root"):  # config.yaml may hold a path relative to where the run was launched
        cfg.data.root = record["data_root"]
    task_class = import_object(cfg.task._target_)
    task = task_class.load_from_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.ckpt", map_location="cpu").eval()
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.setup("test")
    metrics_csv = run_dir / "csv" / "metrics.csv"
    metrics = pd.read_csv(metrics_csv) if metrics_csv.is_file() else pd.DataFrame()
    return Run(run_dir, cfg, record, task, datamodule, metrics)


def epoch_metrics(metrics: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Lightning's metrics.csv (one row per logging call) -> one row per epoch of the given columns."""
    present = [c for c in columns if c in metrics]
    return metrics.groupby("epoch")[present].mean() if present else pd.DataFrame()


def plot_learning_curves(metrics: pd.DataFrame, monitor: str, axes=None):
    """Training loss per step and per epoch, validation loss and ``monitor`` (e.g. val/acc) per epoch."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    steps = metrics.dropna(subset=["train/loss_step"]) if "train/loss_step" in metrics else pd.DataFrame()
    if not steps.empty:
        axes[0].plot(steps["step"], steps["train/loss_step"], lw=0.8, alpha=0.6, label="train/loss (step)")
    per_epoch = epoch_metrics(metrics, ["step", "train/loss_epoch", "val/loss"])
    for column in ("train/loss_epoch", "val/loss"):
        if column in per_epoch and per_epoch[column].notna().any():
            axes[0].plot(per_epoch["step"], per_epoch[column], "o-", label=column)
    axes[0].set_xlabel("step")
    axes[0].set_title("loss")
    axes[0].legend(fontsize=8)
    per_epoch = epoch_metrics(metrics, [monitor])
    if monitor in per_epoch:
        axes[1].plot(per_epoch.index, per_epoch[monitor], "o-")
    axes[1].set_xlabel("epoch")
    axes[1].set_title(monitor)
    return axes


def class_indices(target: torch.Tensor) -> torch.Tensor:
    """Class index per sample from int labels or from B x classes (one-hot / soft) targets."""
    return target.argmax(dim=-1) if target.dim() > 1 else target


@torch.no_grad()
def classify(task, loader, max_batches: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true class indices over ``loader`` (one pass; V maps per sample are averaged as in test)."""
    predicted, true = [], []
    for index, (inputs, target) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        probs = task(inputs).softmax(dim=-1)
        if probs.shape[0] != len(target):  # (B V) x classes: average over each sample's views
            probs = probs.reshape(len(target), -1, probs.shape[-1]).mean(dim=1)
        predicted.append(probs.argmax(dim=-1).numpy())
        true.append(class_indices(target).numpy())
    return np.concatenate(predicted), np.concatenate(true)


def confusion_matrix(predicted: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j]: samples of true class i predicted as j."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    return counts


def plot_confusion(counts: np.ndarray, class_names, ax=None, title: str = "confusion matrix"):
    """Row-normalized confusion matrix with the counts written in the cells."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 5))
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(counts):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(ticks, class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (accuracy {np.trace(counts) / max(counts.sum(), 1):.1%})", fontsize=9)
    return ax
