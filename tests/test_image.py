"""Tests of the image modality: the mini set, the Table 14 transforms, the DataModule, unreadable files, adapter."""

from __future__ import annotations

import hashlib
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

from modalities.image import mini
from modalities.image.adapter import ImageAdapter
from modalities.image.datamodule import ImageDataModule, UnreadableImageWarning
from modalities.image.preprocess import IMAGENET_MEAN, eval_transform, train_transform


def digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_mini_layout_is_imagefolder_with_three_splits(mini_image_root):
    for split, per_class in {"train": 8, "val": 4, "test": 4}.items():
        folders = sorted(p.name for p in (mini_image_root / split).iterdir())
        assert folders == sorted(mini.CLASSES)
        assert all(len(list((mini_image_root / split / c).glob("*.png"))) == per_class for c in folders)
    with Image.open(next((mini_image_root / "train" / "ring").glob("*.png"))) as image:
        assert image.mode == "RGB" and image.size == (mini.IMAGE_SIZE, mini.IMAGE_SIZE)


def test_mini_is_deterministic_and_built_once(tmp_path):
    splits = {"train": 2, "val": 1, "test": 1}
    a = mini.build_mini(tmp_path / "a", seed=3, splits=splits)
    b = mini.build_mini(tmp_path / "b", seed=3, splits=splits)
    assert digest(a) == digest(b)
    assert digest(mini.build_mini(tmp_path / "c", seed=4, splits=splits)) != digest(a)
    marker = next(a.rglob("*.png"))
    marker.write_bytes(b"edited")  # a complete set is left alone ...
    mini.build_mini(a, seed=3, splits=splits)
    assert marker.read_bytes() == b"edited"
    mini.build_mini(a, seed=3, splits=splits, force=True)  # ... unless forced
    assert digest(a) == digest(b)
    assert not list(tmp_path.glob(".*-building-*"))  # no staging leftovers


def test_mini_classes_are_not_separable_by_mean_colour(tmp_path):
    """A nearest-centroid classifier on mean RGB stays near chance (0.1); shape is what separates classes."""
    root = mini.build_mini(tmp_path / "m", splits={"train": 40, "test": 20})

    def features(split):
        xs, ys = [], []
        for label, name in enumerate(mini.CLASSES):
            for path in sorted((root / split / name).glob("*.png")):
                xs.append(np.asarray(Image.open(path), dtype=np.float32).mean(axis=(0, 1)))
                ys.append(label)
        return np.stack(xs), np.array(ys)

    x_train, y_train = features("train")
    x_test, y_test = features("test")
    centroids = np.stack([x_train[y_train == c].mean(0) for c in range(len(mini.CLASSES))])
    predicted = np.argmin(((x_test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == y_test).mean() < 0.25


def test_train_transform_has_the_table14_augmentations():
    steps = train_transform(224).transforms
    kinds = [type(t).__name__ for t in steps]
    assert kinds[0] == "RandomResizedCropAndInterpolation" and steps[0].scale == (0.08, 1.0)
    assert isinstance(steps[1], T.RandomHorizontalFlip) and steps[1].p == 0.5
    assert any(isinstance(t, RandAugment) for t in steps)
    erasing = [t for t in steps if isinstance(t, RandomErasing)]
    assert len(erasing) == 1 and erasing[0].probability == 0.25
    normalize = next(t for t in steps if isinstance(t, T.Normalize))
    assert tuple(normalize.mean.tolist()) == pytest.approx(IMAGENET_MEAN)


def test_eval_transform_resizes_to_size_over_0875_bicubic_then_centre_crops():
    resize, crop, *_ = eval_transform(224).transforms
    assert resize.size == 256 and resize.interpolation == T.InterpolationMode.BICUBIC
    assert crop.size == (224, 224)
    assert eval_transform(384).transforms[0].size == 384  # 384 px: plain resize, as the paper evaluates


def test_randaugment_posterize_never_asks_pillow_for_zero_bits():
    ops = [op for t in train_transform(32).transforms for op in getattr(t, "ops", []) if "Posterize" in op.name]
    assert ops and all(op.level_fn(10.0, op.hparams)[0] == 1 for op in ops)
    transform = train_transform(32, auto_augment="rand-n15-m10-mstd0-inc1")  # every op at the ceiling
    image = Image.new("RGB", (32, 32), (120, 30, 200))
    for _ in range(20):
        assert transform(image).shape == (3, 32, 32)


def test_datamodule_batches_classes_and_eval_determinism(mini_image_root):
    dm = ImageDataModule(mini_image_root, image_size=32, batch_size=16, num_workers=0, test_split="test")
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert dm.num_classes == 10 and dm.in_chans == 3 and dm.class_names == sorted(mini.CLASSES)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and labels.dtype == torch.int64
    assert len(dm.train_dataloader()) == 80 // 16
    first = next(iter(dm.test_dataloader()))[0]
    assert torch.equal(first, next(iter(dm.test_dataloader()))[0])
    # test images are normalized with ImageNet statistics: roughly centred, unit scale
    assert abs(float(first.mean())) < 1.0 and 0.3 < float(first.std()) < 2.0


def test_datamodule_checks_num_classes(mini_image_root):
    dm = ImageDataModule(mini_image_root, num_classes=1000, image_size=32, num_workers=0)
    with pytest.raises(ValueError, match="has 10 classes but data.num_classes is 1000"):
        dm.setup("fit")


def test_missing_dataset_says_where_it_comes_from_and_the_layout(tmp_path):
    dm = ImageDataModule(tmp_path / "imagenet")
    with pytest.raises(FileNotFoundError) as error:
        dm.prepare_data()
    text = str(error.value)
    assert str(tmp_path / "imagenet") in text
    assert "image-net.org" in text and "<root>/train/<class>/<image>" in text and "<root>/val/<class>" in text


def test_mini_root_is_built_on_first_use(tmp_path):
    dm = ImageDataModule(tmp_path / "mini" / "image", build_mini=True, image_size=32, num_workers=0,
                         test_split="test")
    dm.prepare_data()
    assert mini.is_complete(tmp_path / "mini" / "image") and dm.num_classes == 10


def test_unreadable_image_is_named_skipped_and_counted(mini_image_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mini_image_root, root)
    broken = root / "train" / "circle" / "circle_0003.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    dm = ImageDataModule(root, image_size=32, batch_size=16, num_workers=0)
    dm.setup("fit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(dm.train_dataloader())
    named = [w for w in caught if issubclass(w.category, UnreadableImageWarning)]
    assert len(named) == 1 and "circle_0003.png" in str(named[0].message)
    assert len(batches) == 5  # the epoch runs to its end
    assert sum(len(labels) for _, labels in batches) == 79
    assert dm.skipped_inputs == 1


def test_adapter_is_identity_with_a_shape_check():
    adapter = ImageAdapter()
    images = torch.randn(2, 3, 8, 8)
    assert adapter.out_chans == 3 and adapter(images) is images
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        adapter(torch.randn(2, 1, 8, 8))
