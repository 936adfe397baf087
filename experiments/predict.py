"""Evaluate a saved checkpoint of a run with the deploy (re-parameterized) model on a data split, or predict on
your own files with it (``--files``).

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

Predicting on your own files (``--files``)::

    python experiments/predict.py <run> --files a.wav b.flac           # audio: any sample rate, channels, length
    python experiments/predict.py <run> --files cat.jpg dog.png --top-k 3 --json
    python experiments/predict.py <run> --files clip.mp4 clip.avi     # video: the test split's clips x crops
    python experiments/predict.py <run> --files chair.off lamp.ply cup.obj cloud.txt   # point clouds
    python experiments/predict.py <run> --files table.csv [--out forecast.csv]         # time series
    python experiments/predict.py <run> --files street.jpg [--out street_labels.png]   # segmentation
    python experiments/predict.py <run> --files street.jpg --top-k 10                   # detection

Every file is read with the run's TEST preprocessing: the DataModule's ``read_input(path)`` (see
``modalities.base.ModalityDataModule``; the DataModule is rebuilt from the run's config.yaml, whose data root
must still be there for the class names). A classification run prints, per file, the top-k (``--top-k``,
default 5) class names with their probabilities (``--json``: the same as JSON). A file that cannot be used is
named on stderr with the reason and the others are still predicted; the exit code is 1 when any file failed.

A time-series run takes wide tables (CSV or Parquet): a ``timestamp`` column and one column per station of the
run's data (``station_0``, ``station_1`` ... for Corrformer's files, which have no station names; a wide-table
run's own column names), in the data's stored units (x10 for Corrformer's files), with at least ``seq_len``
hourly rows. The model forecasts the ``pred_len`` hours after the table's last row from its last ``seq_len``
rows (the DataModule's window: ``regularize_hourly``, ``time_features``, ``pack_window``); the forecast, a
``timestamp`` column and one column per station, is written to ``--out`` (default ``<table>_forecast.csv``
next to the table) and its path printed.

A detection run prints each image's detections scoring 0.5 or more (at most ``--top-k``): class, score and box
in the image's pixels (``--json`` / ``--out``: the same as JSON). A segmentation run writes each image's label map as a PNG at the image's own size (``--out``, default
``<image>_segmentation.png`` next to it; ADE20K's values: class i is i + 1) and prints the classes that cover
most of it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import default_collate

from experiments import harness
from modalities.base import ModalityDataModule

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


def _file_error(path: str | Path, error: Exception) -> str:
    """One line naming the file and why it failed (the DataModule's UnreadableInputError already names it)."""
    text = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return text if str(path) in text else f"{path}: {type(error).__name__}: {text}"


@torch.inference_mode()
def classify(task: L.LightningModule, inputs) -> torch.Tensor:
    """Class probabilities of a batch, as the test loop scores it (its test-time augmentation, when the task
    has one, averages the logits over the augmented copies)."""
    augment = getattr(task, "test_time_augmentation", None)
    logits = torch.stack([task(view) for view in augment(inputs)]).mean(dim=0) if augment else task(inputs)
    return logits.float().softmax(dim=-1)


def classify_files(task, datamodule, files: list[str | Path], top_k: int = 5) -> tuple[list[dict], list[dict]]:
    """(predictions, errors): the top-k classes of every readable file, and what failed for the others."""
    names = datamodule.class_names
    if not names:
        raise ValueError(f"{type(datamodule).__name__} has no class names: is this a classification run?")
    k = max(1, min(int(top_k), len(names)))
    predictions, errors = [], []
    for path in files:
        try:
            probs = classify(task, default_collate([datamodule.read_input(path)]))[0]
        except (ValueError, OSError, RuntimeError) as error:
            errors.append({"file": str(path), "error": _file_error(path, error)})
            continue
        values, indices = probs.topk(k)
        predictions.append({
            "file": str(path),
            "top_k": [{"class": names[i], "probability": float(v)} for v, i in zip(values.tolist(), indices.tolist())],
        })
    return predictions, errors


def forecast_path(table: str | Path, out: str | Path | None = None) -> Path:
    """Where a table's forecast goes: ``out``, else ``<table>_forecast.csv`` next to it."""
    if out:
        return Path(out)
    table = Path(table)
    stem = table.name.split(".")[0] if table.name.lower().endswith((".csv.gz", ".csv.bz2")) else table.stem
    return table.with_name(f"{stem}_forecast.csv")


def forecast_files(task, datamodule, files: list[str | Path], out: str | Path | None = None
                   ) -> tuple[list[dict], list[dict]]:
    """(forecasts, errors): every readable table's forecast written as CSV, and what failed for the others."""
    if out and len(files) > 1:
        raise ValueError("--out names one forecast file: give one table, or leave --out unset "
                         "(each table's forecast then goes next to it as <table>_forecast.csv)")
    import pandas as pd

    stations = datamodule.station_ids()
    forecasts, errors = [], []
    for path in files:
        try:
            inputs, timestamps = datamodule.read_window(path)
            with torch.inference_mode():
                forecast = task(inputs.unsqueeze(0))[0].float().numpy()  # pred_len x D
            frame = pd.DataFrame(forecast, columns=stations)
            frame.insert(0, datamodule.time_column, timestamps.strftime("%Y-%m-%d %H:%M:%S"))
            written = forecast_path(path, out)
            frame.to_csv(written, index=False)
        except (ValueError, OSError, RuntimeError) as error:
            errors.append({"file": str(path), "error": _file_error(path, error)})
            continue
        forecasts.append({"file": str(path), "forecast": str(written), "steps": len(frame),
                          "stations": len(stations), "first": str(timestamps[0]), "last": str(timestamps[-1])})
    return forecasts, errors


def segmentation_path(image: str | Path, out: str | Path | None = None) -> Path:
    """Where an image's label map goes: ``out``, else ``<image>_segmentation.png`` next to it."""
    image = Path(image)
    return Path(out) if out else image.with_name(f"{image.stem}_segmentation.png")


def segment_files(task, datamodule, files: list[str | Path], out: str | Path | None = None
                  ) -> tuple[list[dict], list[dict]]:
    """(segmentations, errors): every readable image's label map written as a PNG at the image's size (ADE20K's
    values: class i is i + 1, 0 = none), with the classes that cover most of it; what failed for the others."""
    if out and len(files) > 1:
        raise ValueError("--out names one label map: give one image, or leave --out unset "
                         "(each map then goes next to its image as <image>_segmentation.png)")
    from PIL import Image

    names = datamodule.class_names
    done, errors = [], []
    for path in files:
        try:
            inputs = default_collate([datamodule.read_input(path)])
            with Image.open(path) as handle:
                size = (handle.height, handle.width)
            with torch.inference_mode():
                labels = task.predict_logits(inputs, size).argmax(dim=1)[0]
            written = segmentation_path(path, out)
            Image.fromarray((labels + 1).to(torch.uint8).numpy()).save(written)
        except (ValueError, OSError, RuntimeError) as error:
            errors.append({"file": str(path), "error": _file_error(path, error)})
            continue
        share = torch.bincount(labels.flatten(), minlength=len(names)).float() / labels.numel()
        top = share.topk(min(3, len(names)))
        done.append({"file": str(path), "segmentation": str(written), "size": list(size),
                     "classes": [{"class": names[i], "share": float(v)}
                                 for v, i in zip(top.values.tolist(), top.indices.tolist()) if v > 0]})
    return done, errors


def detect_files(task, datamodule, files: list[str | Path], top_k: int = 5, threshold: float = 0.5
                 ) -> tuple[list[dict], list[dict]]:
    """(detections, errors): per readable image its detections scoring at least ``threshold`` (at most
    ``top_k``): class, score and box (x1, y1, x2, y2 in the image's pixels); what failed for the others."""
    names = datamodule.class_names
    found, errors = [], []
    for path in files:
        try:
            image = datamodule.read_input(path)
            with torch.inference_mode():
                (det,) = task([image])
        except (ValueError, OSError, RuntimeError) as error:
            errors.append({"file": str(path), "error": _file_error(path, error)})
            continue
        keep = (det["scores"] >= threshold).nonzero().flatten()[: max(1, int(top_k))]
        found.append({"file": str(path), "size": list(image.shape[-2:]), "detections": [
            {"class": names[int(det["labels"][i]) - 1], "score": float(det["scores"][i]),
             "box": [round(float(v), 1) for v in det["boxes"][i]]} for i in keep.tolist()]})
    return found, errors


def predict_files(
    path: str | Path,
    files: list[str | Path],
    top_k: int = 5,
    fast: bool = False,
    overrides: list[str] | None = None,
    config: str | Path | None = None,
    out: str | Path | None = None,
) -> dict:
    """Predict on the user's ``files`` with the checkpoint at ``path`` (file or run dir).

    Returns ``{"checkpoint", "modality", "model", "predictions" (classification: file, top_k [{class,
    probability}]), "forecasts" (time series: file, forecast CSV ...) or "segmentations" (file, label-map PNG,
    the classes covering most of it), "errors" [{file, error}]}``.
    """
    if not files:
        raise ValueError("--files needs at least one file")
    checkpoint, run_dir = resolve_checkpoint(path)
    cfg = load_run_config(run_dir, config, overrides)
    datamodule = instantiate(cfg.data)
    if type(datamodule).read_input is ModalityDataModule.read_input:
        raise ValueError(f"{type(datamodule).__name__} does not read single input files (no read_input)")
    datamodule.prepare_data()
    task = load_deploy_task(cfg, checkpoint).eval()
    harness.check_task_fits_data(task, datamodule)
    if fast:
        from core.backbones.fast import to_fast_model

        task = to_fast_model(task)
    record = {"checkpoint": str(checkpoint.resolve()), "modality": cfg.get("modality", {}).get("name"),
              "model": "fast" if fast else "deploy"}
    if hasattr(datamodule, "read_window"):  # a forecasting run
        record["forecasts"], record["errors"] = forecast_files(task, datamodule, files, out)
    elif hasattr(task, "detector"):  # a detection run
        record["detections"], record["errors"] = detect_files(task, datamodule, files, top_k)
        if out:
            Path(out).write_text(json.dumps(record, indent=1) + "\n")
    elif hasattr(task, "predict_logits"):  # a segmentation run
        record["segmentations"], record["errors"] = segment_files(task, datamodule, files, out)
    else:
        record["predictions"], record["errors"] = classify_files(task, datamodule, files, top_k)
        if out:
            Path(out).write_text(json.dumps(record, indent=1) + "\n")
    return record


def format_predictions(record: dict) -> str:
    """The human-readable table: per file, rank / class / probability (or the forecast written)."""
    lines = []
    for item in record.get("predictions", []):
        width = max(len(entry["class"]) for entry in item["top_k"])
        lines.append(item["file"])
        lines += [f"  {rank:>2}. {entry['class']:<{width}}  {entry['probability']:.4f}"
                  for rank, entry in enumerate(item["top_k"], start=1)]
    for item in record.get("detections", []):
        lines.append(f"{item['file']}: {len(item['detections'])} detections (score >= 0.5)")
        lines += [f"  {d['class']:<12} {d['score']:.3f}  box {d['box']}" for d in item["detections"]]
    for item in record.get("segmentations", []):
        shares = ", ".join(f"{c['class']} {c['share']:.0%}" for c in item["classes"])
        lines.append(f"{item['file']}: label map {item['size'][0]} x {item['size'][1]} ({shares}) -> "
                     f"{item['segmentation']}")
    for item in record.get("forecasts", []):
        lines.append(f"{item['file']}: forecast of {item['steps']} steps x {item['stations']} stations "
                     f"({item['first']} .. {item['last']}) -> {item['forecast']}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="deploy.pt, a Lightning .ckpt, or a run directory")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--fast", action="store_true", help="evaluate the fast inference structure instead")
    parser.add_argument("--override", nargs="*", default=[], help="config overrides key=value (e.g. data.root=...)")
    parser.add_argument("--config", default=None, help="the run's config.yaml (default: <run dir>/config.yaml)")
    parser.add_argument("--out", default=None,
                        help="metrics JSON (default: <run dir>/predict_<split>.json); with --files: the forecast "
                             "CSV of a time-series run (default: <table>_forecast.csv), the label-map PNG of a "
                             "segmentation run (default: <image>_segmentation.png), the JSON record otherwise")
    parser.add_argument("--files", nargs="+", default=None, metavar="FILE",
                        help="predict on these files of the run's modality instead of evaluating a split")
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per file with --files (default 5)")
    parser.add_argument("--json", action="store_true", help="with --files: print JSON instead of the table")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.files is None:
        record = predict(args.checkpoint, args.split, args.fast, args.override, args.config, args.out)
        print(json.dumps(record, indent=1))
        return record
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    record = predict_files(args.checkpoint, args.files, args.top_k, args.fast, args.override, args.config, args.out)
    if args.json:
        print(json.dumps(record, indent=1))
    elif text := format_predictions(record):
        print(text)
    for error in record["errors"]:
        print(f"error: {error['error']}", file=sys.stderr)
    record["exit_code"] = 1 if record["errors"] else 0
    return record


if __name__ == "__main__":
    sys.exit(main().get("exit_code", 0))
