"""The video recipe through the harness: multi-view softmax averaging in the task, `modality=video` end to end
(one batch per loop) with the single-frame variant, and the Kinetics-400 paper preset (Table 11 values, and a
fast_dev_run of it on a tiny Kinetics-layout tree)."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from core.tasks import ClassificationTask
from core.tasks.classification import average_views
from experiments.harness import check_config
from experiments.run import train
from experiments.video_single_frame_baseline import summarize, table
from modalities.video import build_mini
from modalities.video.adapter import VideoAdapter

VIDEO_ADAPTER = {"_target_": "modalities.video.adapter.VideoAdapter", "layout": "grid"}


@pytest.fixture(scope="module")
def tiny_mini_root(tmp_path_factory):
    """The mini video set with one clip per class and split (Kinetics CSV + clip layout)."""
    return build_mini(tmp_path_factory.mktemp("video_run") / "mini", splits={"train": 1, "val": 1, "test": 1})


# --- multi-view evaluation -----------------------------------------------------------------------------------


def test_task_averages_the_softmax_over_views():
    torch.manual_seed(0)
    task = ClassificationTask(num_classes=5, backbone={"name": "unireplknet_test"}, adapter=VIDEO_ADAPTER).eval()
    clips = torch.randn(2, 3, 4, 3, 16, 16)  # B = 2 videos x V = 3 views x N_F = 4 frames
    with torch.no_grad():
        merged = task(clips)
        per_view = torch.stack([task(clips[:, v]) for v in range(3)], dim=1)  # each view alone: B x V x K
    assert merged.shape == (2, 5)
    assert torch.allclose(merged.softmax(-1), per_view.softmax(-1).mean(1), atol=1e-6)
    assert torch.allclose(merged.exp().sum(-1), torch.ones(2), atol=1e-6)  # log-probabilities


def test_average_views_passes_single_views_through_and_checks_counts():
    logits = torch.randn(4, 3)
    assert average_views(logits, 1) is logits
    assert average_views(logits, 2).shape == (2, 3)
    with pytest.raises(ValueError, match="made 7 maps, not a whole number of 2 views per sample"):
        average_views(torch.randn(7, 3), 2)


def test_the_adapter_says_how_many_views_it_made():
    assert VideoAdapter.num_views(torch.zeros(2, 3, 4, 3, 8, 8)) == 3
    assert VideoAdapter.num_views(torch.zeros(2, 4, 3, 8, 8)) == 1


# --- modality=video ------------------------------------------------------------------------------------------


def test_modality_video_recipe_composes():
    from tests.conftest import compose_config

    cfg = compose_config(["modality=video"])
    check_config(cfg)
    assert cfg.data._target_ == "modalities.video.datamodule.VideoDataModule" and cfg.data.build_mini
    assert cfg.adapter._target_ == "modalities.video.adapter.VideoAdapter"
    assert cfg.adapter.layout == "grid" and cfg.data.frame_size == 32
    assert 8 <= cfg.data.num_frames <= 16 and cfg.data.augment.hflip == 0.0  # a flip would swap left / right
    adapter = VideoAdapter(**{k: v for k, v in cfg.adapter.items() if k != "_target_"})
    tiled = adapter(torch.zeros(1, cfg.data.num_frames, 3, 32, 32))
    assert tiled.shape[-2] * tiled.shape[-1] == cfg.data.num_frames * 32 * 32


@pytest.mark.parametrize("single_frame", [False, True], ids=["tiled", "single_frame"])
def test_modality_video_fast_dev_run(make_config, tiny_mini_root, tmp_path, single_frame):
    overrides = ["modality=video", "debug=fast_dev_run", f"data.root={tiny_mini_root}", "data.build_mini=false",
                 "data.batch_size=4"]
    if single_frame:  # one RGB frame: no frame difference (the baseline script's overrides)
        overrides += ["data.num_frames=1", "adapter.rows=1", "adapter.cols=1", "adapter.frame_difference=false",
                      "data.in_chans=3"]
    record = train(make_config(overrides))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["modality"] == "video" and saved["num_classes"] == 10
    assert saved["in_chans"] == (3 if single_frame else 6)  # the mini recipe tiles frames with their differences
    assert 0.0 <= record["test/acc"] <= 1.0
    assert record["test/acc_deploy"] == pytest.approx(record["test/acc"], abs=1e-6)
    assert record["deploy_max_logit_diff"] < 1e-3


def test_single_frame_baseline_summary_table():
    tiled = {"test/acc": 0.9, "test/acc_deploy": 0.9, "train_wall_time_s": 300.0, "num_classes": 10,
             "run_dir": "a", "overrides": ["modality=video"]}
    single = {"test/acc": 0.11, "test/acc_deploy": 0.11, "train_wall_time_s": 40.0, "num_classes": 10,
              "run_dir": "b", "overrides": ["modality=video", "data.num_frames=1"]}
    summary = summarize(tiled, single)
    assert summary["chance"] == pytest.approx(0.1)
    assert summary["runs"]["single_frame"]["num_frames"] == "1"
    text = table(summary)
    assert "| tiled | recipe default | 0.900 | 0.900 | 300 |" in text
    assert "| single_frame | 1 | 0.110 | 0.110 | 40 |" in text and "| chance | - | 0.100 |" in text


# --- the Kinetics-400 paper preset ---------------------------------------------------------------------------


def test_kinetics400_preset_carries_table11(make_config):
    cfg = make_config(["experiment=kinetics400_unireplknet_s"])
    check_config(cfg)
    data, task = cfg.data, cfg.task
    assert cfg.modality.name == "video" and cfg.backbone.name == "unireplknet_s"
    assert (data.num_frames, data.sampling_rate, data.frame_size) == (16, 4, 224)
    assert (data.test_clips, data.test_crops, data.num_classes) == (5, 3, 400)
    assert data.annotation_format == "csv" and data.annotations.train == "annotations/train.csv"
    assert tuple(data.augment.scale) == (0.08, 1.0) and data.augment.hflip == 0.5 and data.augment.re_prob == 0.25
    assert (data.augment.rand_augment.num_ops, data.augment.rand_augment.magnitude) == (4, 7)
    assert (data.mixup.mixup_alpha, data.mixup.cutmix_alpha, data.mixup.label_smoothing) == (0.8, 1.0, 0.1)
    assert task.mixup is None  # mixing happens in the data pipeline (clip-consistent cutmix)
    assert task.optimizer.name == "adamw" and task.optimizer.weight_decay == 0.05 and task.label_smoothing == 0.1
    global_batch = data.batch_size * cfg.trainer.accumulate_grad_batches
    assert task.optimizer.lr == pytest.approx(4e-3 * global_batch / 256)
    assert task.scheduler.name == "cosine" and task.scheduler.warmup_epochs == 5 and cfg.trainer.max_epochs == 90
    adapter = VideoAdapter(**{k: v for k, v in cfg.adapter.items() if k != "_target_"})
    assert adapter(torch.zeros(1, 16, 3, 224, 224)).shape == (1, 3, 896, 896)  # Eq. 5: 16 frames of 224 -> 896


def test_kinetics400_preset_fast_dev_run(make_config, tiny_mini_root):
    """The preset end to end with UniRepLKNet-S, on a tiny Kinetics-layout tree, frames shrunk to 32 px."""
    cfg = make_config([
        "experiment=kinetics400_unireplknet_s", "debug=fast_dev_run", f"data.root={tiny_mini_root}",
        "data.num_classes=null", "data.frame_size=32", "data.eval_short_side=32", "data.num_frames=4",
        "data.batch_size=2", "data.eval_batch_size=2", "data.pin_memory=false", "data.persistent_workers=false",
        "trainer.accumulate_grad_batches=1",
    ])
    record = train(cfg)
    assert record["experiment"] == "kinetics400_unireplknet_s" and record["backbone"] == "unireplknet_s"
    assert record["global_step"] == 1 and record["num_classes"] == 10
    assert record["test/acc_deploy"] == pytest.approx(record["test/acc"], abs=1e-6)
    saved = OmegaConf.load(cfg.paths.output_dir + "/config.yaml")
    assert saved.data.mixup.cutmix_alpha == 1.0 and saved.data.test_clips == 5 and saved.data.test_crops == 3
