"""experiments/predict.py: a short image run's deploy.pt, its best.ckpt and the run directory evaluate to the
run's own deploy test metrics (also with the fast model); bad paths and configs fail with clear messages."""

from __future__ import annotations

import json
import math

import pytest

from experiments.predict import load_run_config, main, predict, resolve_checkpoint
from experiments.run import train


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, mini_image_root):
    from tests.conftest import compose_config

    run_dir = tmp_path_factory.mktemp("predict") / "run"
    cfg = compose_config(
        ["modality=image", f"data.root={mini_image_root}", "debug=limit_batches", "backbone=unireplknet_test",
         "data.batch_size=8", "trainer.max_epochs=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=null"],
        run_dir,
    )
    record = train(cfg)
    return run_dir, record


def test_predict_reproduces_the_runs_deploy_metrics(short_run, tmp_path):
    run_dir, record = short_run
    deploy = predict(run_dir / "checkpoints" / "deploy.pt", out=tmp_path / "deploy.json")
    best = predict(run_dir / "checkpoints" / "best.ckpt", out=tmp_path / "best.json")
    fast = main([str(run_dir), "--fast", "--out", str(tmp_path / "fast.json")])  # run dir -> deploy.pt
    for result in (deploy, best, fast):
        assert math.isclose(result["test/acc_deploy"], record["test/acc_deploy"], abs_tol=1e-6)
        assert math.isclose(result["test/loss_deploy"], record["test/loss_deploy"], rel_tol=1e-4)
    assert fast["model"] == "fast" and fast["checkpoint"].endswith("deploy.pt")
    assert json.loads((tmp_path / "best.json").read_text())["checkpoint"].endswith("best.ckpt")
    assert predict(run_dir, split="val")["split"] == "val"
    assert (run_dir / "predict_val.json").is_file()


def test_predict_errors(short_run, tmp_path):
    run_dir, _ = short_run
    with pytest.raises(FileNotFoundError, match="no checkpoint file or run directory"):
        resolve_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="has no checkpoints/deploy.pt"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no run config"):
        load_run_config(tmp_path)
    with pytest.raises(ValueError, match="must look like key=value"):
        load_run_config(run_dir, overrides=["data.batch_size"])
    with pytest.raises(ValueError, match="split must be"):
        predict(run_dir, split="train")
