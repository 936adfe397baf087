"""ImageNet-22K reading (class folders at the root, a held-out split) and the 22K -> 1K head conversion."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from experiments.convert_head import class_list, convert_head, main
from modalities.image.datamodule import ImageDataModule, held_out_indices


@pytest.fixture
def flat_root(tmp_path) -> Path:
    """The ImageNet-22K layout: <root>/<wnid>/*.JPEG, no split folders; one class with a single image."""
    for wnid, count in (("n00004475", 4), ("n00005787", 3), ("n00006024", 1)):
        (tmp_path / wnid).mkdir()
        for i in range(count):
            Image.new("RGB", (40, 30), (i * 40, 80, 120)).save(tmp_path / wnid / f"{wnid}_{i}.JPEG")
    return tmp_path


def test_class_folders_at_the_root_with_a_held_out_split(flat_root):
    dm = ImageDataModule(flat_root, image_size=32, num_workers=0, train_split=".", val_split="holdout",
                         test_split="holdout", holdout_per_class=2)
    dm.setup()
    assert dm.class_names == ["n00004475", "n00005787", "n00006024"]
    train, val = dm.dataset("train"), dm.dataset("val")
    names = lambda ds: sorted(Path(p).name for p, _ in ds.samples)  # noqa: E731
    # the last 2 (sorted) images of each class are held out; a one-image class keeps its image for training
    assert names(val) == ["n00004475_2.JPEG", "n00004475_3.JPEG", "n00005787_1.JPEG", "n00005787_2.JPEG"]
    assert names(train) == ["n00004475_0.JPEG", "n00004475_1.JPEG", "n00005787_0.JPEG", "n00006024_0.JPEG"]
    assert set(names(train)).isdisjoint(names(val)) and names(dm.dataset("test")) == names(val)
    x, y = val[0]
    assert x.shape == (3, 32, 32) and y == 0 and val.targets == [0, 0, 1, 1]
    assert held_out_indices([0, 0, 0, 1], 5) == {1, 2}


def test_holdout_settings_must_agree(flat_root):
    with pytest.raises(ValueError, match="holdout_per_class > 0 go together"):
        ImageDataModule(flat_root, train_split=".", val_split="holdout", test_split="holdout")
    with pytest.raises(ValueError, match="go together"):
        ImageDataModule(flat_root, train_split="train", val_split="val", holdout_per_class=3)


def test_22k_head_rows_are_carried_to_1k_by_wnid(tmp_path):
    source, target = class_list("imagenet22k"), class_list("imagenet")
    assert len(source) == 21841 and len(target) == 1000 and source == sorted(source)
    weight = torch.arange(len(source), dtype=torch.float32)[:, None].repeat(1, 4)
    state = {"stages.0.0.gamma": torch.ones(3), "head.weight": weight, "head.bias": -weight[:, 0]}
    out, missing = convert_head(state, source, target)
    assert missing == ["n04399382"]  # teddy bear: not in the fall 2011 ImageNet-22K release
    assert out["head.weight"].shape == (1000, 4) and torch.equal(out["stages.0.0.gamma"], state["stages.0.0.gamma"])
    first = source.index(target[0])
    assert torch.equal(out["head.weight"][0], weight[first]) and out["head.bias"][0] == -first
    teddy = target.index("n04399382")
    assert torch.equal(out["head.weight"][teddy], torch.zeros(4)) and out["head.bias"][teddy] == -weight[:, 0].mean()
    torch.save({"model": state}, tmp_path / "in22k.pth")
    main([str(tmp_path / "in22k.pth"), str(tmp_path / "in1k.pth")])
    assert torch.load(tmp_path / "in1k.pth")["head.weight"].shape == (1000, 4)
    with pytest.raises(ValueError, match="head has 21841 classes but the source class list has 1000"):
        convert_head(state, target, target)
    with pytest.raises(FileNotFoundError, match="imagenet22k"):
        class_list("imagenet23k")
