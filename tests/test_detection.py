"""The detection modality and task: COCO layout and targets (RLE masks, crowd regions, category ids with gaps),
bad images and annotations, the mini scenes, the Mask R-CNN task (outputs, losses, mAP, checkpoint start and
re-parameterization), and the Table 7 presets.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import core
from core.tasks import DetectionTask
from modalities.detection import mini
from modalities.detection.datamodule import DetectionDataModule, collate_detection
from tests.conftest import compose_config

ADAPTER = {"_target_": "modalities.detection.adapter.DetectionAdapter"}
SMALL = {"train2017": 6, "val2017": 2, "test2017": 2}
TINY = dict(fpn_channels=16, anchor_sizes=[8, 16, 32, 64, 128], min_size=128, max_size=128, representation_size=32,
            mask_channels=8, rpn_batch_size_per_image=32, box_batch_size_per_image=32)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return mini.build_mini(tmp_path_factory.mktemp("det") / "mini", splits=SMALL)


def test_mini_is_coco_layout_with_visible_instances(small_root):
    payload = json.loads(mini.annotation_file(small_root, "train2017").read_text())
    assert [c["name"] for c in payload["categories"]] == ["ball", "box", "roof", "pole"]
    assert len(payload["images"]) == 6 and all((small_root / "train2017" / i["file_name"]).is_file()
                                               for i in payload["images"])
    anns = payload["annotations"]
    assert len(anns) >= 6 and len({a["id"] for a in anns}) == len(anns)
    assert all(a["area"] >= mini.MIN_VISIBLE and a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str)
               for a in anns)
    again = mini.build_mini(small_root.parent / "again", splits=SMALL)
    assert mini.annotation_file(again, "val2017").read_bytes() == mini.annotation_file(small_root, "val2017").read_bytes()


def test_targets_follow_the_annotations(small_root):
    datamodule = DetectionDataModule(small_root, num_workers=0, batch_size=2, test_split="test2017",
                                     augment={"hflip": 0.0})
    assert datamodule.num_classes == 4 and datamodule.class_names == ["ball", "box", "roof", "pole"]
    image, target = datamodule.dataset("train")[0]
    assert image.shape == (3, 128, 128) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    boxes, masks = target["boxes"], target["masks"]
    assert boxes.shape[1] == 4 and masks.shape == (len(boxes), 128, 128) and len(target["labels"]) == len(boxes)
    for box, mask in zip(boxes, masks):  # each box is its visible mask's extent
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert torch.allclose(box, torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32))
    images, targets = collate_detection([datamodule.dataset("train")[i] for i in range(3)] + [None])
    assert len(images) == len(targets) == 3


def test_augment_warps_masks_and_boxes_together(small_root):
    plain = DetectionDataModule(small_root, num_workers=0, augment={"hflip": 0.0}).dataset("train")[1]
    warped_module = DetectionDataModule(small_root, num_workers=0,
                                        augment={"scale_range": [0.5, 0.6], "rotation": 30, "color_jitter": 0.3})
    torch.manual_seed(3)
    image, target = warped_module.dataset("train")[1]
    masks, boxes = target["masks"], target["boxes"]
    assert image.shape == plain[0].shape and not torch.equal(image, plain[0])
    assert masks.shape[0] == len(boxes) == len(target["labels"]) == len(target["iscrowd"]) == len(target["area"]) >= 1
    for box, mask, area in zip(boxes, masks, target["area"]):  # the box of the WARPED mask, not of warped corners
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert torch.equal(box, torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32))
        assert area == mask.sum() >= mini.MIN_VISIBLE
    # zoomed out to half the size, every thing shrinks to about a quarter of its area
    assert target["masks"].sum() < 0.5 * plain[1]["masks"].sum()
    assert not DetectionDataModule(small_root, num_workers=0, augment={"hflip": 0.0}).augment
    with pytest.raises(ValueError, match=r"scale_range must be \[low, high\]"):
        DetectionDataModule(small_root, num_workers=0, augment={"scale_range": [1.2, 0.8]})


def coco_with_gaps_and_crowd(root, tmp_path):
    """A copy of the mini set whose category ids are 3, 7, 11, 90 and whose first val annotation is a crowd."""
    shutil.copytree(root, tmp_path / "coco")
    for split in SMALL:
        path = mini.annotation_file(tmp_path / "coco", split)
        payload = json.loads(path.read_text())
        remap = {1: 3, 2: 7, 3: 11, 4: 90}
        for cat in payload["categories"]:
            cat["id"] = remap[cat["id"]]
        for ann in payload["annotations"]:
            ann["category_id"] = remap[ann["category_id"]]
        if split == "val2017":
            payload["annotations"][0]["iscrowd"] = 1
        path.write_text(json.dumps(payload))
    return tmp_path / "coco"


def test_category_ids_with_gaps_and_crowd_regions(small_root, tmp_path):
    root = coco_with_gaps_and_crowd(small_root, tmp_path)
    datamodule = DetectionDataModule(root, num_workers=0, augment={"hflip": 0.0})
    train = datamodule.dataset("train")
    assert set(torch.cat([train[i][1]["labels"] for i in range(len(train))]).tolist()) <= {1, 2, 3, 4}
    val = datamodule.dataset("val")
    first = val.coco.imgToAnns[val.ids[0]][0]
    assert first["iscrowd"] == 1
    _, target = val[0]
    assert target["iscrowd"][0] == 1  # kept, marked, for evaluation
    train.coco.imgToAnns[train.ids[0]][0]["iscrowd"] = 1
    n = len(train.coco.imgToAnns[train.ids[0]])
    assert len(train[0][1]["boxes"]) == n - 1  # left out of training


def test_bad_images_and_annotations_are_named_and_counted(small_root, tmp_path):
    shutil.copytree(small_root, tmp_path / "coco")
    root = tmp_path / "coco"
    payload = json.loads(mini.annotation_file(root, "train2017").read_text())
    (root / "train2017" / payload["images"][1]["file_name"]).write_bytes(b"")
    payload["annotations"][0]["bbox"] = [5.0, 5.0, 0.0, 4.0]
    mini.annotation_file(root, "train2017").write_text(json.dumps(payload))
    datamodule = DetectionDataModule(root, num_workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = datamodule.dataset("train")
        items = [dataset[i] for i in range(len(dataset))]
    messages = " | ".join(str(w.message) for w in caught)
    assert f"skipping unreadable image {root / 'train2017' / payload['images'][1]['file_name']}" in messages
    assert f"dropped annotation {payload['annotations'][0]['id']} with an empty box" in messages
    assert sum(item is None for item in items) == 1
    assert datamodule.input_counts == {"unreadable_images": 1, "bad_annotations": 1} and datamodule.skipped_inputs == 1
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        DetectionDataModule(tmp_path / "nowhere").check_root()


def test_task_detects_learns_and_scores(small_root):
    torch.manual_seed(0)
    datamodule = DetectionDataModule(small_root, num_workers=0, augment={"hflip": 0.0})
    task = DetectionTask(4, {"name": "unireplknet_test"}, ADAPTER, **TINY)
    images, targets = collate_detection([datamodule.dataset("train")[i] for i in range(2)])
    losses = task.detector(images, [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    task.eval()
    with torch.no_grad():
        detections = task(images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "labels", "scores", "masks"}
    # a perfect detector scores mAP 1: the metric path with the targets as detections
    perfect = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"])),
                "masks": t["masks"][:, None].float()} for t in targets]
    task.detector.forward = lambda imgs: perfect  # noqa: ARG005 - stands in for the model
    task._update((images, targets), task.test_map)
    results = task.test_map.compute()
    assert float(results["bbox_map_50"]) == pytest.approx(1.0) and float(results["segm_map"]) == pytest.approx(1.0)


def test_task_starts_from_a_classification_checkpoint_and_keeps_its_maps(tmp_path):
    classifier = core.create_backbone("unireplknet_test", num_classes=1000)
    torch.save({"model": classifier.state_dict()}, tmp_path / "in1k.pth")
    with pytest.warns(UserWarning, match="no stage norms"):
        task = DetectionTask(4, {"name": "unireplknet_test", "init_from": str(tmp_path / "in1k.pth")}, ADAPTER, **TINY)
    assert torch.equal(task.backbone.stages[3][0].dwconv.lk_origin.weight, classifier.stages[3][0].dwconv.lk_origin.weight)
    task.eval()
    trained = copy.deepcopy(task)
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
    task.reparameterize()
    assert task.deploy_difference(trained, images) < 1e-4


@pytest.mark.parametrize("variant, drop_path", [("t", 0.4), ("s", 0.6)])
def test_table7_presets(variant, drop_path):
    cfg = compose_config([f"experiment=coco_mask_rcnn_unireplknet_{variant}"])
    assert cfg.task.optimizer.lr == 1.0e-4 and cfg.data.batch_size == 16 and cfg.trainer.max_epochs == 36
    assert list(cfg.task.min_size) == list(range(480, 801, 32)) and cfg.task.max_size == 1333
    assert (cfg.task.scheduler.name, cfg.task.scheduler.start_epoch, cfg.task.scheduler.step_epochs) == ("step", 27, 6)
    assert cfg.backbone.name == f"unireplknet_{variant}" and cfg.backbone.drop_path_rate == drop_path
    assert cfg.data.num_classes == 80


def test_a_run_detects_on_the_users_images(small_root, tmp_path):
    from experiments.predict import format_predictions, predict_files
    from experiments.run import train
    from tests.conftest import FAST

    run_dir = tmp_path / "run"
    train(compose_config(["modality=detection", *FAST, f"data.root={small_root}", "data.build_mini=false",
                          "task.representation_size=32", "task.mask_channels=8", "task.fpn_channels=16"], run_dir))
    image = tmp_path / "scene.png"
    Image.open(small_root / "test2017" / sorted(p.name for p in (small_root / "test2017").iterdir())[0]).save(image)
    (tmp_path / "broken.jpg").write_bytes(b"")
    record = predict_files(run_dir, [image, tmp_path / "broken.jpg"], top_k=3)
    (item,) = record["detections"]
    assert item["size"] == [128, 128] and len(item["detections"]) <= 3
    assert all(d["class"] in mini.THINGS and d["score"] >= 0.5 for d in item["detections"])
    assert "broken.jpg: cannot use it" in record["errors"][0]["error"]
    assert format_predictions(record).startswith(f"{image}: {len(item['detections'])} detections")
