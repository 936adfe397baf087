"""``backbone.init_from``: fine-tuning from a checkpoint file (core/tasks/base.py ``init_backbone``).

Published (training-structure, 3-channel, 1000-class) files, a run's ``best.ckpt`` and ``deploy.pt``, both tasks;
the saved hyper-parameters leave ``init_from`` out, so checkpoints rebuild without the init file.
"""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import pytest
import torch

import core
from core.checkpoint import CheckpointError
from core.tasks import ClassificationTask
from core.tasks.forecasting import ForecastingTask
from experiments import harness
from experiments.run import train
from tests.conftest import FAST

ADAPTER_1 = {"_target_": "modalities.image.adapter.ImageAdapter", "in_chans": 1}
ADAPTER_3 = {"_target_": "modalities.image.adapter.ImageAdapter", "in_chans": 3}
STAGE_WEIGHT = "stages.2.0.dwconv.lk_origin.weight"  # a large-kernel block's weight (training structure)
TINY_FORECASTER = {"_target_": "modalities.timeseries.model.UniRepLKNetForecaster", "num_nodes": 3, "d_model": 8,
                   "n_heads": 2, "d_ff": 16}
DATA_INFO = {"num_series": 6, "seq_len": 48, "label_len": 24, "pred_len": 24, "num_time_features": 4,
             "series_coords": np.random.default_rng(0).uniform(0, 50, (6, 3)).tolist()}


def classification(init_from=None, num_classes=10, adapter=ADAPTER_1, **backbone) -> ClassificationTask:
    spec = {"name": "unireplknet_test", **backbone}
    if init_from is not None:
        spec["init_from"] = str(init_from)
    return ClassificationTask(num_classes=num_classes, backbone=spec, adapter=adapter)


def forecasting(init_from=None) -> ForecastingTask:
    spec = {"name": "unireplknet_test", "init_from": None if init_from is None else str(init_from)}
    return ForecastingTask(model=TINY_FORECASTER, backbone=spec,
                           adapter={"_target_": "modalities.timeseries.adapter.TimeSeriesAdapter"},
                           data_info=DATA_INFO)


def assert_same_weights(backbone, reference: dict, skip=("head.", "downsample_layers.0.0.weight")):
    state = backbone.state_dict()
    compared = [k for k in reference if not k.startswith(skip)]
    assert compared
    for key in compared:
        assert torch.equal(state[key], reference[key]), key


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A published-layout file: a training-structure backbone's bare state dict, 3 channels, 1000 classes."""
    torch.manual_seed(0)
    model = core.create_backbone("unireplknet_test", num_classes=1000, layer_scale_init_value=1.0)
    with torch.no_grad():  # non-trivial batch-norm statistics too
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_()
    path = tmp_path_factory.mktemp("published") / "unireplknet_test_in1k.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_published_file_into_another_channel_and_class_count(published, caplog):
    path, reference = published
    torch.manual_seed(1)
    with caplog.at_level(logging.WARNING, logger="core.tasks.base"):
        task = classification(path)
    backbone = task.backbone
    assert torch.equal(backbone.state_dict()[STAGE_WEIGHT], reference[STAGE_WEIGHT])
    assert_same_weights(backbone, reference)
    # stem adapted to 1 channel (timm's rule: the sum over the 3 input channels)
    stem = backbone.state_dict()["downsample_layers.0.0.weight"]
    assert stem.shape[1] == 1
    assert torch.allclose(stem, reference["downsample_layers.0.0.weight"].sum(1, keepdim=True))
    # a fresh 10-class head, and the drop is logged with both sizes
    assert backbone.head.weight.shape == (10, 128)
    assert "1000 classes" in caplog.text and "the task 10" in caplog.text
    assert task(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_same_class_count_keeps_the_head(published):
    path, reference = published
    task = classification(path, num_classes=1000, adapter=ADAPTER_3)
    assert_same_weights(task.backbone, reference, skip=())


def test_saved_hparams_leave_init_from_out_and_rebuild_without_the_file(published, tmp_path):
    path, _ = published
    copy = tmp_path / "init.pth"
    copy.write_bytes(path.read_bytes())
    spec = {"name": "unireplknet_test", "init_from": str(copy)}
    task = ClassificationTask(num_classes=10, backbone=spec, adapter=ADAPTER_1)
    assert spec["init_from"] == str(copy)  # the caller's dict is not edited
    assert "init_from" not in task.hparams["backbone"] and "init_from" not in task.hparams_initial["backbone"]
    assert task.init_from == str(copy)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    data = torch.utils.data.TensorDataset(torch.randn(4, 1, 32, 32), torch.arange(4))
    trainer.fit(task, torch.utils.data.DataLoader(data, batch_size=4))
    trainer.save_checkpoint(tmp_path / "task.ckpt")
    trained = {k: v.clone() for k, v in task.backbone.state_dict().items()}
    task.eval().reparameterize().save_deploy(tmp_path / "deploy.pt")
    copy.unlink()  # the init file is gone: rebuilding from a checkpoint does not need it
    restored = ClassificationTask.load_from_checkpoint(tmp_path / "task.ckpt", map_location="cpu")
    deployed = ClassificationTask.load_deploy(tmp_path / "deploy.pt")
    assert restored.init_from is None and "init_from" not in restored.hparams["backbone"]
    assert_same_weights(restored.backbone, trained, skip=())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(deployed(x), task(x))
    with pytest.raises(FileNotFoundError, match="init.pth"):  # starting a new task still needs it
        classification(copy)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        classification(tmp_path / "nowhere.pth")


def test_unknown_key_is_named(published, tmp_path):
    path, reference = published
    state = dict(reference)
    state["stages.9.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: stages\.9\.extra\.weight"):
        classification(tmp_path / "extra.pth")
    del state["stages.9.extra.weight"], state[STAGE_WEIGHT]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: stages\.2\.0\.dwconv\.lk_origin\.weight"):
        classification(tmp_path / "short.pth")


def test_deploy_layout_file(published, tmp_path):
    path, reference = published
    model = core.create_backbone("unireplknet_test", num_classes=1000)
    model.load_state_dict(reference)
    torch.save(model.eval().reparameterize().state_dict(), tmp_path / "deploy_layout.pth")
    # the training structure cannot be rebuilt from fused weights: a clear error
    with pytest.raises(CheckpointError, match="deploy-structure .* cannot be rebuilt"):
        classification(tmp_path / "deploy_layout.pth")
    # the deploy structure loads it; a training-structure file loads into the deploy structure too
    deployed = classification(tmp_path / "deploy_layout.pth", deploy=True).backbone
    assert_same_weights(deployed, model.state_dict())
    from_training = classification(path, deploy=True).backbone
    assert_same_weights(from_training, model.state_dict(), skip=("head.", "downsample_layers.0.0.weight"))


def test_forecasting_task_starts_from_a_classification_checkpoint(published, tmp_path):
    path, reference = published
    source = classification(path, num_classes=10, adapter=ADAPTER_3)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "classification.ckpt")  # Lightning's layout
    task = forecasting(tmp_path / "classification.ckpt")  # num_classes=0: the head is ignored
    assert task.backbone.num_classes == 0
    assert_same_weights(task.backbone, reference)
    assert "init_from" not in task.hparams["backbone"]
    # and back: a forecasting checkpoint (keys model.backbone.*) into a classification task
    torch.save({"state_dict": task.state_dict()}, tmp_path / "forecasting.ckpt")
    again = classification(tmp_path / "forecasting.ckpt", num_classes=5)
    assert_same_weights(again.backbone, task.backbone.state_dict())


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, mini_image_root):
    """A short image run (best.ckpt and deploy.pt), composed as experiments/run.py composes it."""
    from tests.conftest import compose_config

    run_dir = tmp_path_factory.mktemp("image_run") / "run"
    cfg = compose_config(["modality=image", f"data.root={mini_image_root}", "debug=limit_batches",
                          "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                          "trainer.limit_test_batches=1", "data.batch_size=8", "backbone=unireplknet_test"],
                         run_dir)
    train(cfg)
    return run_dir / "checkpoints"


def build(make_config, overrides):
    from hydra.utils import instantiate

    cfg = make_config(overrides)
    return harness.build_task(cfg, instantiate(cfg.data))


def test_a_runs_best_ckpt_and_deploy_pt_start_a_new_run(image_run, make_config, mini_image_root):
    best, deploy = image_run / "best.ckpt", image_run / "deploy.pt"
    assert best.is_file() and deploy.is_file()
    saved = ClassificationTask.load_from_checkpoint(best, map_location="cpu").backbone.state_dict()
    base = ["modality=image", f"data.root={mini_image_root}", *FAST]
    task = build(make_config, [*base, f"backbone.init_from={best}"])
    assert_same_weights(task.backbone, saved, skip=())
    # deploy.pt holds the deploy structure: the training structure cannot start from it (a clear error) ...
    with pytest.raises(Exception, match="deploy-structure") as error:  # Hydra's instantiate wraps it
        build(make_config, [*base, f"backbone.init_from={deploy}"])
    assert isinstance(error.value.__cause__ or error.value, CheckpointError)
    # ... the deploy structure can
    task = build(make_config, [*base, f"backbone.init_from={deploy}", "+backbone.deploy=true"])
    assert_same_weights(task.backbone, ClassificationTask.load_deploy(deploy).backbone.state_dict(), skip=())
    # a missing file is named (the cause of Hydra's InstantiationException)
    with pytest.raises(Exception, match="no_such.ckpt") as error:
        build(make_config, [*base, f"backbone.init_from={image_run / 'no_such.ckpt'}"])
    assert isinstance(error.value.__cause__ or error.value, FileNotFoundError)


def test_fast_dev_run_audio_from_a_published_file(published, make_config, monkeypatch):
    path, reference = published
    built = []
    original = harness.build_task

    def recording(cfg, datamodule):
        task = original(cfg, datamodule)
        built.append({k: v.clone() for k, v in task.backbone.state_dict().items()})  # before training
        return task

    monkeypatch.setattr(harness, "build_task", recording)
    record = train(make_config(["modality=audio", *FAST, f"backbone.init_from={path}"]))
    assert record["global_step"] == 1
    assert_same_weights_state(built[0], reference)


def assert_same_weights_state(state: dict, reference: dict):
    keys = [k for k in reference if not k.startswith(("head.", "downsample_layers.0.0.weight"))]
    for key in keys:
        assert torch.equal(state[key], reference[key]), key


def test_timeseries_run_starts_from_an_image_runs_best_ckpt(image_run, make_config, tmp_path_factory):
    """modality=timeseries (ForecastingTask, 1 channel, no head) from a classification run's best.ckpt."""
    from modalities.timeseries.mini import build_mini

    root = build_mini(tmp_path_factory.mktemp("ts") / "mini", num_stations=66, days=40)
    best = image_run / "best.ckpt"
    task = build(make_config, ["modality=timeseries", *FAST, f"data.root={root}", "data.build_mini=false",
                               f"backbone.init_from={best}"])
    assert isinstance(task, ForecastingTask) and task.backbone.num_classes == 0
    assert task.backbone.state_dict()["downsample_layers.0.0.weight"].shape[1] == 1
    saved = ClassificationTask.load_from_checkpoint(best, map_location="cpu").backbone.state_dict()
    assert_same_weights(task.backbone, saved)
    assert "init_from" not in task.hparams["backbone"] and task.init_from == str(best)
