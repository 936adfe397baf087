"""The dense-prediction backbone: the published dense key layout (classification keys without ``norm`` / ``head``,
plus ``norm0..3``), published detector / classification / project checkpoints loading into it, and equal outputs
after re-parameterization and through the fast inference structure.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from timm.layers import LayerNorm2d
from torch import nn

import core
from core.backbones.dense import DenseUniRepLKNet
from core.checkpoint import CheckpointError, load_checkpoint
from tests.test_backbone import OFFICIAL_KEYS, read_official


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator) * 0.05
                tensor.copy_((noise.abs() + 0.5) if name.endswith("running_var") else tensor + noise)
    return model


@pytest.mark.parametrize("deploy", [False, True], ids=["train", "deploy"])
def test_dense_keys_are_the_classification_keys_without_head_plus_stage_norms(deploy):
    if not OFFICIAL_KEYS.is_dir():
        pytest.skip(f"reference key lists not present at {OFFICIAL_KEYS}")
    with torch.device("meta"):
        model = core.create_backbone("unireplknet_s", dense=True, deploy=deploy)
    official = read_official("s", "deploy" if deploy else "train")
    expected = {k: s for k, s in official.items() if not k.startswith(("norm.", "head."))}
    expected.update({f"norm{i}.{p}": (c,) for i, c in enumerate((96, 192, 384, 768)) for p in ("weight", "bias")})
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert model.out_channels == [96, 192, 384, 768] and model.strides == [4, 8, 16, 32]


def test_stage_maps_are_the_normed_intermediates():
    torch.manual_seed(0)
    model = randomized(core.create_backbone("unireplknet_test", dense=True, in_chans=2)).eval()
    x = torch.randn(2, 2, 96, 64)
    with torch.no_grad():
        maps = model(x)
        raw = model.forward_intermediates(x, intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 24, 16), (2, 32, 12, 8), (2, 64, 6, 4), (2, 128, 3, 2)]
    for i, (m, r) in enumerate(zip(maps, raw)):
        assert torch.allclose(m, getattr(model, f"norm{i}")(r))
    two = core.create_backbone("unireplknet_test", dense=True, out_indices=(1, 3))
    assert two.out_channels == [32, 128] and [k for k in two.state_dict() if k.startswith("norm")] == [
        "norm1.weight", "norm1.bias", "norm3.weight", "norm3.bias"]
    assert [tuple(m.shape) for m in two(torch.randn(1, 3, 64, 64))] == [(1, 32, 8, 8), (1, 128, 2, 2)]
    with pytest.raises(TypeError, match="no classification head"):
        model.forward_head(maps[-1])
    with pytest.raises(ValueError, match="no classifier"):
        core.create_backbone("unireplknet_test", dense=True, num_classes=10)
    with pytest.raises(ValueError, match="out_indices"):
        core.create_backbone("unireplknet_test", dense=True, out_indices=(3, 1))


def test_published_detector_checkpoint_loads_strict(tmp_path):
    """A detector file ({"meta", "state_dict": {backbone.*, neck.*, rpn_head.*, roi_head.*}}) -> its backbone."""
    source = randomized(core.create_backbone("unireplknet_test", dense=True))
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state.update({"neck.lateral_convs.0.conv.weight": torch.zeros(8, 16, 1, 1), "rpn_head.rpn_cls.bias": torch.zeros(3)})
    torch.save({"meta": {"epoch": 36}, "state_dict": state}, tmp_path / "cascade_mask_rcnn.pth")
    model = load_checkpoint(core.create_backbone("unireplknet_test", dense=True), tmp_path / "cascade_mask_rcnn.pth")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    # into the deploy structure: re-parameterized on the way, same outputs
    deploy = load_checkpoint(core.create_backbone("unireplknet_test", dense=True, deploy=True),
                             tmp_path / "cascade_mask_rcnn.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(source.eval()(x), deploy.eval()(x)):
            assert torch.allclose(a, b, atol=1e-5)


def test_classification_checkpoint_loads_with_fresh_stage_norms(tmp_path):
    classifier = randomized(core.create_backbone("unireplknet_test", num_classes=1000))
    torch.save({"model": classifier.state_dict()}, tmp_path / "in1k.pth")
    model = core.create_backbone("unireplknet_test", dense=True)
    with pytest.warns(UserWarning, match=r"no stage norms \(norm0.bias, norm0.weight,"):
        load_checkpoint(model, tmp_path / "in1k.pth")
    assert torch.equal(model.stages[2][0].dwconv.lk_origin.weight, classifier.stages[2][0].dwconv.lk_origin.weight)
    assert torch.equal(model.norm3.weight, torch.ones(128)) and torch.equal(model.norm3.bias, torch.zeros(128))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = classifier.eval().forward_intermediates(x, intermediates_only=True)
        for i, (m, r) in enumerate(zip(model.eval()(x), raw)):
            assert torch.allclose(m, LayerNorm2d(r.shape[1], eps=1e-6)(r), atol=1e-6)


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    torch.save(core.create_backbone("unireplknet_a", dense=True).state_dict(), tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="shape mismatches: downsample_layers"):
        load_checkpoint(core.create_backbone("unireplknet_test", dense=True), tmp_path / "a.pth")


def test_reparameterize_and_fast_path_keep_the_stage_maps():
    torch.manual_seed(0)
    model = randomized(core.create_backbone("unireplknet_test", dense=True)).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        before = model(x)
        fast = core.optimize_for_inference(model, x, candidates=("eager",), repeats=1)
        fused = core.reparameterize(model)(x)
        fast_out = fast(x)
    assert type(fast).__name__ == "FastDenseUniRepLKNet" and fast.inference_choice["chosen"] == "eager"
    for a, b, c in zip(before, fused, fast_out):
        assert torch.allclose(a, b, atol=1e-5) and b.shape == c.shape
        assert (b - c).abs().max() <= 1e-4 * b.abs().max()


def test_dense_baselines_list_their_widths():
    resnet = core.create_backbone("resnet18", dense=True, in_chans=1)
    maps = resnet(torch.randn(1, 1, 64, 64))
    assert resnet.out_channels == [64, 128, 256, 512] == [m.shape[1] for m in maps]
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convnext = core.create_backbone("convnext_atto", dense=True)
    assert convnext.out_channels == [40, 80, 160, 320]
    assert isinstance(core.create_backbone("unireplknet_test", dense=True), DenseUniRepLKNet)
