"""Tests of point-cloud training through the shared task and the harness: OA / mAcc, rotation voting, configs."""

import json
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from core.tasks import ClassificationTask
from experiments.run import train
from modalities.pointcloud import build_mini
from tests.conftest import FAST

PROJECTOR = {
    "_target_": "modalities.pointcloud.adapter.PointCloudAdapter", "resolution": 16, "feature_dim": 4,
}
MACC = {"macc": {"_target_": "torchmetrics.classification.MulticlassAccuracy", "average": "macro"}}


def make_task(num_classes: int, **kwargs) -> ClassificationTask:
    return ClassificationTask(num_classes, backbone={"name": "unireplknet_test"}, adapter=PROJECTOR, top_k=5, **kwargs)


def run_test(task: ClassificationTask, points: torch.Tensor, labels: torch.Tensor) -> dict:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(TensorDataset(points, labels), batch_size=5)
    return trainer.test(task, loader, verbose=False)[0]


def test_overall_and_mean_per_class_accuracy_on_a_known_confusion():
    # class 0: 8 clouds, all right; class 1: 2 clouds, one right; class 2: 2 clouds, both called class 1
    labels = torch.tensor([0] * 8 + [1, 1] + [2, 2])
    predicted = torch.tensor([0] * 8 + [1, 0] + [1, 1])
    points = torch.zeros(12, 4, 3)
    points[:, 0, 0] = predicted.float()  # the stub model reads its prediction from the first point
    task = make_task(3, metrics=MACC)
    task.forward = lambda inputs: torch.nn.functional.one_hot(inputs[:, 0, 0].long(), 3).float() * 10
    scores = run_test(task, points, labels)
    assert scores["test/acc"] == pytest.approx(9 / 12)  # OA
    assert scores["test/macc"] == pytest.approx((1 + 0.5 + 0) / 3)  # mAcc


def test_rotation_voting_averages_the_logits_of_the_rotated_clouds():
    # one point on +x; rotated about z by 0, 90, 180, 270 degrees its x is 1, 0, -1, 0
    points = torch.tensor([[[1.0, 0.0, 0.0]]]).repeat(5, 1, 1)
    labels = torch.ones(5, dtype=torch.long)
    seen = []

    def stub(inputs):
        seen.append(inputs.clone())
        x = inputs[:, 0, 0]
        return torch.stack([10 * x, torch.ones_like(x)], dim=1)  # class 0 only when x > 0.1

    voting = {"_target_": "modalities.pointcloud.preprocess.RotationVoting", "num_votes": 4, "mode": "up", "up_axis": 2}
    single = make_task(2)
    single.forward = stub
    assert run_test(single, points, labels)["test/acc"] == 0.0  # one view: class 0, wrong
    seen.clear()
    voted = make_task(2, test_time_augmentation=voting)
    voted.forward = stub
    assert run_test(voted, points, labels)["test/acc"] == 1.0  # mean logits (0, 1): class 1, right
    assert [round(float(batch[0, 0, 0]), 4) for batch in seen] == [1.0, 0.0, -1.0, 0.0]
    assert voted.hparams["test_time_augmentation"] == voting  # plain values, rebuilt from checkpoints


@pytest.fixture(scope="module")
def tiny_mini_root(tmp_path_factory):
    return build_mini(tmp_path_factory.mktemp("data") / "pointcloud", splits={"train": 4, "test": 2})


def test_modality_pointcloud_fast_dev_run_reports_oa_and_macc(make_config, tiny_mini_root, tmp_path):
    cfg = make_config(["modality=pointcloud", *FAST, f"data.root={tiny_mini_root}", "data.batch_size=8",
                       "data.num_points=128", "data.mesh_points=256"])
    assert cfg.task.metrics.macc.average == "macro"
    assert cfg.adapter._target_ == "modalities.pointcloud.adapter.PointCloudAdapter"
    record = train(cfg)
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["modality"] == "pointcloud" and on_disk["in_chans"] == 3 and on_disk["num_classes"] == 12
    for key in ("test/acc", "test/macc", "test/acc_deploy", "test/macc_deploy"):
        assert 0.0 <= record[key] <= 1.0, key
    assert math.isclose(record["test/macc"], record["test/macc_deploy"], abs_tol=1e-4)


def test_modelnet40_preset_composes_with_the_table12_recipe(make_config):
    cfg = make_config(["experiment=modelnet40_unireplknet_s"])
    assert cfg.backbone.name == "unireplknet_s"
    assert cfg.data.num_points == 4096 and cfg.data.batch_size == 16 and cfg.data.format == "off"
    assert list(cfg.data.augment.scale) == pytest.approx([2 / 3, 3 / 2], abs=1e-6)
    assert list(cfg.data.augment.translate) == [-0.2, 0.2]
    assert cfg.task.optimizer.name == "adamw" and cfg.task.optimizer.lr == 5e-4
    assert cfg.task.optimizer.weight_decay == 0.05 and cfg.task.label_smoothing == 0.2
    assert cfg.task.scheduler.name == "cosine" and cfg.task.scheduler.min_lr_ratio * 5e-4 == pytest.approx(1e-6)
    assert cfg.trainer.max_epochs == 300 and cfg.adapter.resolution == 224
    assert cfg.task.test_time_augmentation._target_.endswith("RotationVoting")


def test_modelnet40_preset_fast_dev_run_on_mini_meshes_shrunk(make_config, tiny_mini_root):
    """The preset's data, task and trainer path with the tiny backbone, 32 x 32 views and 256 points."""
    cfg = make_config(["experiment=modelnet40_unireplknet_s", *FAST, f"data.root={tiny_mini_root}",
                       "data.num_classes=null", "data.num_points=256", "data.mesh_points=512", "data.batch_size=4",
                       "data.cache_dir=null", "data.num_workers=0", "data.persistent_workers=false",
                       "adapter.resolution=32",
                       "task.test_time_augmentation.num_votes=2"])
    record = train(cfg)
    assert record["experiment"] == "modelnet40_unireplknet_s" and record["global_step"] == 1
    assert "test/macc" in record and "test/macc_deploy" in record
    assert cfg.task.optimizer.lr == 5e-4 and cfg.task.label_smoothing == 0.2  # the preset's recipe ran


@pytest.mark.slow
def test_modelnet40_preset_fast_dev_run_full_size(make_config, tiny_mini_root):
    """The preset as it is (UniRepLKNet-S, 224 x 224 views, batch 16, 4096 points) on the mini meshes.

    Minutes on a 2-core CPU (16 min measured while the machine was shared with other jobs): marked slow.
    """
    cfg = make_config(["experiment=modelnet40_unireplknet_s", "debug=fast_dev_run", f"data.root={tiny_mini_root}",
                       "data.num_classes=null", "data.mesh_points=4096", "data.cache_dir=null",
                       "data.persistent_workers=false",
                       "task.test_time_augmentation.num_votes=2"])
    record = train(cfg)
    assert record["experiment"] == "modelnet40_unireplknet_s" and record["backbone"] == "unireplknet_s"
    assert record["global_step"] == 1 and "test/macc" in record
