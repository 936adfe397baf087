"""Evaluate a saved checkpoint of a run with the deploy (re-parameterized) model on a data split.

    python experiments/predict.py runs/image/unireplknet_test/<time>/checkpoints/deploy.pt
    python experiments/predict.py runs/image/unireplknet_test/<time>/checkpoints/best.ckpt --split val
    python experiments/predict.py runs/image/unireplknet_test/<time>       # deploy.pt if present, else best.ckpt
    python experiments/predict.py <checkpoint> --fast                         # core.optimize_for_inference's model
    python experiments/predict.py <checkpoint> --override data.root=/data/speechcommands data.batch_size=64

The run directory's ``config.yaml`` (written by experiments/run.py next to ``checkpoints/``) says which
DataModule and task to build; ``--config`` points elsewhere. ``deploy.pt`` holds the deploy weights
(``ClassificationTask.load_deploy``); a Lightning ``.ckpt`` holds the training structure, which is loaded and
re-parameterized. Metrics (the task's ``test/*_deploy`` or ``val/*`` values) are printed and written as JSON
(default ``<run dir>/predict_<split>.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from experiments import harness

DEPLOY_FILE, BEST_FILE = "deploy.pt", "best.ckpt"


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """A checkpoint file or a run directory -> (checkpoint file, run directory)."""
    path = Path(path)
    if path.is_dir():
        for name in (DEPLOY_FILE, BEST_FILE):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name, path
        raise FileNotFoundError(f"{path} has no checkpoints/{DEPLOY_FILE} or checkpoints/{BEST_FILE}")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file or run directory at {path}")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path, run_dir


def load_run_config(run_dir: Path, config: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """The run's saved config.yaml, with ``key=value`` overrides applied."""
    path = Path(config) if config else run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no run config at {path}; experiments/run.py writes config.yaml into the run directory "
            "(pass --config <file> for a checkpoint kept elsewhere)"
        )
    cfg = OmegaConf.load(path)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. data.batch_size=64)")
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    for key in ("data", "task"):
        if key not in cfg or "_target_" not in cfg[key]:
            raise ValueError(f"{path} has no {key}._target_; is it a config.yaml written by experiments/run.py?")
    return cfg


def load_deploy_task(cfg: DictConfig, checkpoint: Path) -> L.LightningModule:
    """The task in its deploy structure, in eval mode, from deploy.pt or from a Lightning checkpoint."""
    task_cls = get_class(cfg.task._target_)
    if checkpoint.suffix == ".pt":
        return task_cls.load_deploy(checkpoint, map_location="cpu")
    if checkpoint.suffix != ".ckpt":
        raise ValueError(f"{checkpoint}: expected deploy weights (.pt) or a Lightning checkpoint (.ckpt)")
    task = task_cls.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
    return task.eval().reparameterize()


def evaluate(task: L.LightningModule, datamodule, split: str = "test") -> dict:
    """Run the task's test (or validation) loop over the split; returns its logged metrics."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False)
    run = trainer.test if split == "test" else trainer.validate
    return {k: float(v) for k, v in run(task, datamodule=datamodule)[0].items()}


def predict(
    path: str | Path,
    split: str = "test",
    fast: bool = False,
    overrides: list[str] | None = None,
    config: str | Path | None = None,
    out: str | Path | None = None,
) -> dict:
    """Evaluate the checkpoint at ``path`` (file or run dir); returns and writes the metrics record."""
    checkpoint, run_dir = resolve_checkpoint(path)
    cfg = load_run_config(run_dir, config, overrides)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    task = load_deploy_task(cfg, checkpoint)
    harness.check_task_fits_data(task, datamodule)
    if fast:
        from core.backbones.fast import to_fast_model

        task = to_fast_model(task)
    start = time.perf_counter()
    metrics = evaluate(task, datamodule, split)
    record = {
        "checkpoint": str(checkpoint.resolve()),
        "split": split,
        "model": "fast" if fast else "deploy",
        "modality": cfg.get("modality", {}).get("name"),
        "backbone": cfg.get("backbone", {}).get("name"),
        **metrics,
        "seconds": round(time.perf_counter() - start, 2),
    }
    out = Path(out) if out else run_dir / f"predict_{split}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    record["written_to"] = str(out)
    return record


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="deploy.pt, a Lightning .ckpt, or a run directory")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--fast", action="store_true", help="evaluate the fast inference structure instead")
    parser.add_argument("--override", nargs="*", default=[], help="config overrides key=value (e.g. data.root=...)")
    parser.add_argument("--config", default=None, help="the run's config.yaml (default: <run dir>/config.yaml)")
    parser.add_argument("--out", default=None, help="metrics JSON (default: <run dir>/predict_<split>.json)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    record = predict(args.checkpoint, args.split, args.fast, args.override, args.config, args.out)
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
