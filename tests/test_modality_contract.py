"""The modality contract (docs/architecture.md), checked for every option of the ``modality`` config group and
every ``experiment`` preset: a new modality or preset is tested here without new test code.

- the DataModule derives from the shared base and the map the backbone sees is B' x C' x H x W with
  C' = the DataModule's ``in_chans`` = the adapter's ``out_chans`` = the backbone's input channels;
- the mini build is idempotent (a second ``prepare_data`` writes nothing) and atomic (a build that fails leaves
  neither a dataset nor a staging folder behind);
- a bad file is named in a warning, skipped and counted in ``skipped_inputs`` (modalities that skip inputs);
- ``fast_dev_run`` of every preset on its modality's mini data (the modality's default recipe runs in
  tests/test_harness.py).
"""

from __future__ import annotations

import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from experiments.harness import build_task
from experiments.run import train
from modalities import mini_build
from modalities.base import SPLITS, ModalityDataModule
from tests.conftest import EXPERIMENTS, FAST, MODALITIES, compose_config, preset_modality

# files that describe a dataset rather than hold one input
NOT_INPUTS = {".csv", ".txt", ".json", ".md", ".npy"}


def datamodule_of(modality: str, *overrides: str) -> ModalityDataModule:
    cfg = compose_config([f"modality={modality}", *FAST, *overrides])
    return instantiate(cfg.data, _convert_="all")


def skipping_modalities() -> list[str]:
    return [m for m in MODALITIES if any(datamodule_of(m).bad_input_kinds.values())]


@pytest.mark.parametrize("modality", MODALITIES)
def test_the_backbone_sees_a_map_with_the_declared_channels(modality):
    cfg = compose_config([f"modality={modality}", *FAST, "data.num_workers=0"])
    datamodule = instantiate(cfg.data, _convert_="all")
    assert isinstance(datamodule, ModalityDataModule)
    datamodule.prepare_data()
    datamodule.setup("fit")
    task = build_task(cfg, datamodule).eval()
    assert task.adapter.out_chans == datamodule.in_chans
    seen = []  # the input of the backbone's first convolution (a forecaster calls forward_features, not forward)
    first_conv = next(m for m in task.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == datamodule.in_chans
    first_conv.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    inputs, target = next(iter(datamodule.train_dataloader()))
    with torch.no_grad():
        output = task(inputs)
    (shape,) = seen
    assert len(shape) == 4 and shape[1] == datamodule.in_chans, shape
    assert len(output) == len(target) == len(inputs)


@pytest.mark.parametrize("modality", MODALITIES)
def test_mini_build_is_idempotent_and_atomic(modality, tmp_path, monkeypatch):
    datamodule = datamodule_of(modality)
    datamodule.prepare_data()  # the default mini, built on first use
    before = {p: p.stat().st_mtime_ns for p in datamodule.root.rglob("*") if p.is_file()}
    datamodule.prepare_data()
    assert {p: p.stat().st_mtime_ns for p in datamodule.root.rglob("*") if p.is_file()} == before

    def failing_build(root, write, is_complete, force=False):
        return real_build(root, lambda staging: 1 / 0, is_complete, force)

    real_build = mini_build.build_atomically
    monkeypatch.setattr(datamodule.mini, "build_atomically", failing_build)
    target = tmp_path / "mini"
    with pytest.raises(ZeroDivisionError):
        datamodule.mini.build_mini(target, seed=0)
    assert not datamodule.mini.is_complete(target, 0)
    leftovers = [p for p in tmp_path.rglob("*") if "building" in p.name]
    assert not leftovers and not any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("modality", skipping_modalities())
def test_a_bad_file_is_named_skipped_and_counted(modality, tmp_path):
    source = datamodule_of(modality)
    source.prepare_data()
    root = tmp_path / "data"
    shutil.copytree(source.root, root, ignore=shutil.ignore_patterns(".cache"))
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix not in NOT_INPUTS and "_noise_" not in str(p)]
    suffix = Counter(p.suffix for p in files).most_common(1)[0][0]  # the inputs' file type
    bad = sorted(p for p in files if p.suffix == suffix)[0]
    bad.write_bytes(b"")
    datamodule = datamodule_of(modality, f"data.root={root}", "data.build_mini=false", "data.num_workers=0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for split in SPLITS:
            dataset = datamodule.dataset(split)
            for index in range(len(dataset)):
                if any(bad.name in str(w.message) for w in caught):
                    break
                dataset[index]
    assert any(bad.name in str(w.message) for w in caught), f"no warning named {bad}"
    assert datamodule.skipped_inputs >= 1
    skipping = {kind for kind, skips in datamodule.bad_input_kinds.items() if skips}
    assert datamodule.skipped_inputs == sum(datamodule.input_counts[kind] for kind in skipping)


# presets on the mini data: the tiny backbone, two samples a batch; a preset whose model needs the real data's
# size gets the mini recipe's value for it
PRESET_ON_MINI = ["data.batch_size=2", "data.num_workers=0", "data.pin_memory=false",
                  "data.persistent_workers=false", "trainer.accumulate_grad_batches=1"]
FITS_THE_MINI = {"timeseries": ["task.model.num_nodes=6", "task.model.d_model=64", "task.model.n_heads=4",
                                "task.model.d_ff=128"],
                 "image": ["data.num_classes=null", "data.train_split=train", "data.test_split=test",
                           "data.image_size=32"],
                 "video": ["data.num_classes=null", "data.frame_size=32", "data.num_frames=4",
                           "data.annotations.val=annotations/val.csv", "data.clip_dirs.val=val",
                           "data.annotations.test=annotations/test.csv", "data.clip_dirs.test=test",
                           "data.test_clips=1", "data.test_crops=1"],
                 "pointcloud": ["data.num_classes=null", "data.num_points=256", "adapter.resolution=32"],
                 "detection": ["data.num_classes=null", "task.min_size=128", "task.max_size=128",
                               "task.representation_size=64", "task.mask_channels=16", "task.fpn_channels=32"],
                 "segmentation": ["data.num_classes=null", "data.base_size=96", "data.crop_size=96"],
                 "audio": []}


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if preset_modality(e)])
def test_every_preset_runs_on_its_modality_mini_data(experiment, make_config):
    modality = preset_modality(experiment)
    mini_root = datamodule_of(modality).root
    cfg = make_config([f"experiment={experiment}", *FAST, f"data.root={mini_root}", *PRESET_ON_MINI,
                       *FITS_THE_MINI.get(modality, [])])
    record = train(cfg)
    assert record["experiment"] == experiment and record["modality"] == modality and record["global_step"] == 1
    assert record["skipped_inputs"] == 0
