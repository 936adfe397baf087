"""The segmentation modality and task: ADE20K layout and label handling, bad pairs, the mini scenes, the UPerNet
task (whole / slide inference, ignored pixels, checkpoint start), the poly schedule and the paper presets.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import core
from core.tasks import SegmentationTask
from core.tasks.optim import lr_multiplier
from core.tasks.segmentation import slide_windows
from modalities.segmentation import mini, preprocess
from modalities.segmentation.datamodule import SegmentationDataModule
from tests.conftest import compose_config

ADAPTER = {"_target_": "modalities.segmentation.adapter.SegmentationAdapter"}
SMALL = {"training": 6, "validation": 2, "testing": 2}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return mini.build_mini(tmp_path_factory.mktemp("seg") / "mini", splits=SMALL)


def test_mini_is_ade20k_layout_with_stuff_and_things(small_root):
    images = sorted((small_root / "images" / "training").iterdir())
    labels = sorted((small_root / "annotations" / "training").iterdir())
    assert [p.stem for p in images] == [p.stem for p in labels] == [f"ADE_train_{i:08d}" for i in range(1, 7)]
    values = np.concatenate([np.asarray(Image.open(p)).ravel() for p in labels])
    assert values.max() <= len(mini.CLASSES) and set(np.unique(values)) & {5, 6, 7, 8}  # things present
    assert (values == 0).mean() < 0.05  # "other" is rare
    rows = (small_root / "objectInfo150.txt").read_text().splitlines()
    assert rows[0] == "Idx\tRatio\tTrain\tVal\tName" and [r.split("\t")[-1] for r in rows[1:]] == list(mini.CLASSES)
    again = mini.build_mini(small_root.parent / "again", splits=SMALL)
    assert (again / "images/training/ADE_train_00000003.jpg").read_bytes() == (
        small_root / "images/training/ADE_train_00000003.jpg").read_bytes()


def test_labels_shift_and_eval_keeps_the_label_size(small_root):
    assert preprocess.shift_labels(np.array([0, 1, 8])).tolist() == [255, 0, 7]
    datamodule = SegmentationDataModule(small_root, base_size=64, crop_size=48, batch_size=2, num_workers=0,
                                        test_split="testing")
    assert datamodule.num_classes == 8 and datamodule.class_names[4] == "ball"
    image, label = datamodule.dataset("train")[0]
    assert image.shape == (3, 48, 48) and label.shape == (48, 48) and label.dtype == torch.int64
    image, label = datamodule.dataset("test")[0]
    assert image.shape == (3, 64, 64) and label.shape == (96, 96)  # scored at the annotation's resolution
    raw = np.asarray(Image.open(small_root / "annotations/testing/ADE_test_00000001.png"))
    assert torch.equal(label, torch.from_numpy(preprocess.shift_labels(raw)))
    assert datamodule.read_input(small_root / "images/testing/ADE_test_00000001.jpg").shape == (3, 64, 64)


def test_bad_and_missing_pairs_are_named_skipped_and_counted(small_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_root, root)
    (root / "annotations/training/ADE_train_00000002.png").unlink()  # an image without its label map
    Image.new("L", (10, 10)).save(root / "annotations/training/ADE_train_00000003.png")  # wrong size
    datamodule = SegmentationDataModule(root, base_size=64, crop_size=48, num_workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = datamodule.dataset("train")
        items = [dataset[i] for i in range(len(dataset))]
    messages = " | ".join(str(w.message) for w in caught)
    assert "ADE_train_00000002.jpg: no label map" in messages
    assert "ADE_train_00000003.png is (10, 10), expected a single-channel 96 x 96 map" in messages
    assert len(dataset) == 5 and sum(item is None for item in items) == 1
    assert datamodule.input_counts == {"unreadable_pairs": 1, "missing_labels": 1} and datamodule.skipped_inputs == 2


def test_missing_root_says_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        SegmentationDataModule(tmp_path / "nowhere").check_root()


def test_slide_windows_cover_the_image():
    assert slide_windows(96, 64, 32) == [0, 32]
    assert slide_windows(100, 64, 48) == [0, 36]
    assert slide_windows(50, 64, 32) == [0]


def test_task_outputs_slide_mode_and_ignored_pixels():
    torch.manual_seed(0)
    task = SegmentationTask(5, {"name": "unireplknet_test"}, ADAPTER, decoder_channels=32).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        whole = task(x)
        assert whole.shape == (2, 5, 64, 96)
        slide = SegmentationTask(5, {"name": "unireplknet_test"}, ADAPTER, decoder_channels=32, test_mode="slide",
                                 crop_size=64, stride=32)
        slide.load_state_dict(task.state_dict())
        windows = slide.eval().predict_logits(x)
        right = task(x[..., 32:])  # the two windows: [0, 64) and [32, 96)
        left = task(x[..., :64])
    assert torch.allclose(windows[..., :32], left[..., :32], atol=1e-5)
    assert torch.allclose(windows[..., 64:], right[..., 32:], atol=1e-5)
    assert torch.allclose(windows[..., 32:64], (left[..., 32:] + right[..., :32]) / 2, atol=1e-5)
    # ignored pixels count neither in the loss nor in mIoU
    target = task(x).argmax(1)
    noisy = target.clone()
    noisy[:, :8] = 255
    assert float(task.compute_loss(whole, noisy)) < float(task.compute_loss(whole, (target + 1) % 5))
    task.test_miou(whole.argmax(1), noisy)
    assert float(task.test_miou.compute()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="crop_size and stride"):
        SegmentationTask(5, {"name": "unireplknet_test"}, ADAPTER, test_mode="slide")


def test_task_starts_from_a_classification_checkpoint_and_reparameterizes(tmp_path):
    classifier = core.create_backbone("unireplknet_test", num_classes=1000)
    torch.save({"model": classifier.state_dict()}, tmp_path / "in1k.pth")
    with pytest.warns(UserWarning, match="no stage norms"):
        task = SegmentationTask(4, {"name": "unireplknet_test", "init_from": str(tmp_path / "in1k.pth")}, ADAPTER,
                                decoder_channels=32)
    assert torch.equal(task.backbone.stages[1][0].dwconv.lk_origin.weight, classifier.stages[1][0].dwconv.lk_origin.weight)
    x = torch.randn(1, 3, 64, 64)
    task.eval()
    with torch.no_grad():
        before = task(x)
        after = task.reparameterize()(x)
    assert torch.allclose(before, after, atol=1e-4)


def test_poly_schedule():
    f = lr_multiplier("poly", steps_per_epoch=10, total_steps=110, warmup_epochs=1, power=1.0)
    assert f(0) == pytest.approx(1e-3) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)
    assert lr_multiplier("poly", 10, 100, power=2.0)(50) == pytest.approx(0.25)


@pytest.mark.parametrize("variant, paper_m", [("t", 61), ("s", 86)])
def test_table8_presets(variant, paper_m):
    cfg = compose_config([f"experiment=ade20k_upernet_unireplknet_{variant}"])
    assert cfg.task.optimizer.lr == 1.0e-4 and cfg.task.scheduler.name == "poly" and cfg.task.scheduler.power == 1.0
    assert cfg.trainer.max_steps == 160000 and cfg.data.batch_size == 16 and cfg.data.crop_size == 512
    assert cfg.data.num_classes == 150 and cfg.task.decoder_channels == 512
    with torch.device("meta"):
        task = SegmentationTask(150, {"name": cfg.backbone.name}, ADAPTER, decoder_channels=512)
    # smp's UPerNet is a little wider than mmseg's (the paper's count): within 2.5 %
    assert sum(p.numel() for p in task.parameters()) / 1e6 == pytest.approx(paper_m, rel=0.025)


def test_a_run_segments_the_users_images(small_root, tmp_path):
    from experiments.predict import format_predictions, predict_files
    from experiments.run import train
    from tests.conftest import FAST

    run_dir = tmp_path / "run"
    train(compose_config(["modality=segmentation", *FAST, f"data.root={small_root}", "data.build_mini=false",
                          "task.decoder_channels=16"], run_dir))
    image = tmp_path / "street.jpg"
    Image.open(small_root / "images/testing/ADE_test_00000001.jpg").resize((120, 80)).save(image)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    record = predict_files(run_dir, [image, tmp_path / "broken.jpg"])
    (item,) = record["segmentations"]
    written = np.asarray(Image.open(item["segmentation"]))
    assert written.shape == (80, 120) and 1 <= written.min() and written.max() <= 8  # the image's own size
    assert item["segmentation"].endswith("street_segmentation.png")
    assert "broken.jpg: cannot use it" in record["errors"][0]["error"]
    assert "street.jpg: label map 80 x 120 (" in format_predictions(record)


def test_the_check_renderer_writes_both_layouts_the_datamodules_read(tmp_path):
    from experiments.transfer.dense_renderer import build
    from modalities.detection.datamodule import DetectionDataModule

    build(tmp_path, images=3, seed=1)
    seg = SegmentationDataModule(tmp_path / "segmentation", base_size=96, crop_size=96, test_split="testing",
                                 num_workers=0)
    image, label = seg.dataset("test")[0]
    assert seg.class_names == list(mini.CLASSES) and image.shape == (3, 96, 96) and label.shape == (128, 128)
    assert set(label.unique().tolist()) <= set(range(8)) | {255}
    det = DetectionDataModule(tmp_path / "detection", test_split="test2017", num_workers=0)
    image, target = det.dataset("test")[0]
    assert det.class_names == ["ball", "box", "roof", "pole"] and image.shape == (3, 128, 128)
    # the same scene: every box holds pixels of its thing class in the segmentation label map
    for box, cls in zip(target["boxes"], target["labels"]):
        x1, y1, x2, y2 = (int(v) for v in box)
        assert (label[y1:y2, x1:x2] == 3 + int(cls)).any()
