"""Train, test and deploy-test one model: ``python experiments/run.py modality=<m> [overrides]``.

Compose the config (experiments/configs/train.yaml), check that its pieces agree, instantiate the DataModule,
task and Trainer, fit, test the best checkpoint, re-parameterize and test again, write results.json to the
run dir (default ``runs/<modality>/<backbone>/<timestamp>/``).

    python experiments/run.py modality=image                        # mini data, tiny backbone, minutes on a CPU
    python experiments/run.py experiment=imagenet1k_unireplknet_t data.root=/data/imagenet
    python experiments/run.py modality=image debug=fast_dev_run     # one batch of each loop
    python experiments/run.py modality=image ckpt_path=last hydra.run.dir=<run dir>   # resume a killed run
    python experiments/run.py -m modality=image backbone=unireplknet_test,resnet18    # a sweep
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from experiments import harness

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Run one composed config end to end; returns the results record (also written to results.json)."""
    harness.check_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # builds the mini dataset on first use; a clear error if a real one is missing
    task = harness.build_task(cfg, datamodule)
    harness.check_task_fits_data(task, datamodule)
    harness.apply_speed(task, cfg.get("speed"))
    callbacks = harness.instantiate_group(cfg.get("callbacks"))
    loggers = harness.instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        harness.save_config(cfg, run_dir)

    if cfg.train:
        trainer.fit(task, datamodule=datamodule, ckpt_path=harness.resume_path(cfg.ckpt_path, run_dir))
    metrics = harness.test_and_deploy(trainer, task, datamodule, run_dir, deploy=cfg.deploy) if cfg.test else {}

    record = harness.collect_results(cfg, trainer, task, datamodule, metrics, run_dir)
    if trainer.is_global_zero:
        path = harness.write_results(record, run_dir)
        log.info("%s\nresults: %s", summary(record), path.resolve())
    return record


def summary(record: dict) -> str:
    """The test metrics of a results record, one per line, each with its re-parameterized (deploy) twin."""
    lines = [f"{record.get('modality')} / {record.get('backbone')}: test metrics (training structure | deploy)"]
    for key, value in record.items():
        if key.startswith("test/") and not key.endswith("_deploy") and isinstance(value, (int, float)):
            deploy = record.get(f"{key}_deploy")
            lines.append(f"  {key:<32} {value:.4f}" + (f" | {deploy:.4f}" if isinstance(deploy, (int, float)) else ""))
    return "\n".join(lines)


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except Exception as error:
        # results.json says why this run failed; Hydra then reports it (a sweep's other jobs still run)
        harness.record_failure(cfg, error)
        raise


if __name__ == "__main__":
    main()
