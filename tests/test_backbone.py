"""UniRepLKNet backbone: variant shapes and parameter counts, published key layout, re-parameterization,
the uniform backbone API, the timm registry, the factory and its baselines, and bad-input errors."""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import core
from core.backbones.layers import GRN
from core.backbones.reparam import dilate_kernel, pad_kernel
from core.backbones.unireplknet import DILATED_BRANCHES, VARIANTS

OFFICIAL_KEYS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_keys"
PUBLISHED = ["a", "f", "p", "n", "t", "s", "b", "l", "xl"]
# backbone.md: (deploy, train) parameters in millions, 1000-class head, in_chans 3
PARAMS_M = {
    "a": (4.44, 4.65), "f": (6.24, 6.49), "p": (10.74, 11.08), "n": (18.32, 18.82), "t": (31.04, 31.69),
    "s": (55.65, 56.46), "b": (98.01, 99.09), "l": (218.45, 220.08), "xl": (386.53, 388.69),
}
ALL_K = [0, 3, 5, 7, 9, 11, 13, 15, 17]


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN statistics, BN affine, layer scale and GRN non-trivial values so fusion errors show."""
    gen = torch.Generator().manual_seed(seed)

    def rand(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                rand(m.running_mean, -0.5, 0.5)
                rand(m.running_var, 0.5, 2.0)
                rand(m.weight, 0.5, 1.5)
                rand(m.bias, -0.5, 0.5)
            elif isinstance(m, GRN):
                rand(m.gamma, -1.0, 1.0)
                if m.beta is not None:
                    rand(m.beta, -0.5, 0.5)
            elif isinstance(m, core.UniRepLKNetBlock) and m.gamma is not None:
                rand(m.gamma, 0.5, 1.5)
            elif isinstance(m, nn.Conv2d) and m.groups > 1:
                rand(m.weight, -0.3, 0.3)
    return model


def read_official(variant: str, structure: str) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (OFFICIAL_KEYS / f"unireplknet_{variant}_{structure}.txt").read_text().splitlines():
        if line.strip():
            key, shape, _ = line.split("\t")
            keys[key] = tuple(int(s) for s in shape.strip("()").replace(" ", "").split(",") if s)
    return keys


def build_meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return core.create_backbone(name, num_classes=1000, **kw)


def assert_reparam_equal(model: nn.Module, x: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        before = model(x)
        core.reparameterize(model)
        after = model(x)
        core.reparameterize(model)  # idempotent
        again = model(x)
    tol = 1e-5 * before.abs().max().item()
    assert (before - after).abs().max().item() <= tol
    assert torch.equal(after, again)


@pytest.mark.parametrize("variant", PUBLISHED)
@pytest.mark.parametrize("deploy", [False, True], ids=["train", "deploy"])
def test_parameter_count_and_official_keys(variant, deploy):
    model = build_meta(f"unireplknet_{variant}", deploy=deploy)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    expected = PARAMS_M[variant][0 if deploy else 1]
    assert abs(params - expected) <= 0.005 + 1e-9, f"{params:.4f} M vs {expected} M"
    if not OFFICIAL_KEYS.is_dir():
        pytest.skip(f"reference key lists not present at {OFFICIAL_KEYS}")
    official = read_official(variant, "deploy" if deploy else "train")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {k: s for k, s in ours.items() if official[k] != s} == {}


def test_reparameterized_model_has_deploy_keys():
    model = core.create_backbone("unireplknet_a", num_classes=1000).eval()
    core.reparameterize(model)
    deploy = core.create_backbone("unireplknet_a", num_classes=1000, deploy=True)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in deploy.state_dict().items()}
    deploy.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(deploy.eval()(x), model(x), atol=1e-6)


def test_in_chans_only_changes_the_stem():
    m1 = build_meta("unireplknet_a", in_chans=1)
    m3 = build_meta("unireplknet_a")
    s1, s3 = m1.state_dict(), m3.state_dict()
    diff = [k for k in s3 if s1[k].shape != s3[k].shape]
    assert diff == ["downsample_layers.0.0.weight"]
    assert tuple(s1["downsample_layers.0.0.weight"].shape) == (20, 1, 3, 3)


@pytest.mark.parametrize("kernel_size", ALL_K)
def test_reparameterize_every_kernel_size(kernel_size):
    torch.manual_seed(kernel_size)
    model = randomize(core.create_backbone("unireplknet_test", num_classes=10, kernel_size=kernel_size))
    expected = [tuple(kernel_size if k >= 7 else k for k in stage) for stage in core.default_kernel_sizes((1, 1, 2, 1))]
    assert [tuple(s) for s in model.kernel_sizes] == expected
    assert_reparam_equal(model, torch.randn(2, 3, 64, 64))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("variant", ["a", "f", "p", "n", "t"])
def test_reparameterize_every_variant(variant):
    torch.manual_seed(1)
    model = randomize(core.create_backbone(f"unireplknet_{variant}", num_classes=1000))
    assert_reparam_equal(model, torch.randn(1, 3, 64, 64))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["s", "b", "l", "xl"])
def test_reparameterize_large_variants(variant):
    torch.manual_seed(2)
    model = randomize(core.create_backbone(f"unireplknet_{variant}", num_classes=1000))
    assert_reparam_equal(model, torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("kernel_size", sorted(DILATED_BRANCHES))
def test_dilated_reparam_block_alone(kernel_size):
    """Every DRB row of the (k, r) table, including K = 5 which the block itself uses as a plain conv."""
    torch.manual_seed(0)
    block = randomize(core.DilatedReparamBlock(8, kernel_size)).eval()
    x = torch.randn(2, 8, 24, 24)
    with torch.no_grad():
        before = block(x)
        block.reparameterize()
        after = block(x)
    assert set(dict(block.named_parameters())) == {"lk_origin.weight", "lk_origin.bias"}
    assert (before - after).abs().max() <= 1e-5 * before.abs().max()


@pytest.mark.parametrize("size", [(4, 2), (7, 4), (1, 1), (13, 30)])
def test_drb_on_maps_smaller_than_its_kernels_skips_only_padding_taps(size):
    """same_depthwise_conv drops the taps that meet only padding (13 x 13 on a 4 x 2 map: 7 x 3 taps); the
    training block's output and every gradient equal those of the plain full-kernel convs."""
    torch.manual_seed(0)
    block = randomize(core.DilatedReparamBlock(8, 13)).train()
    x = torch.randn(2, 8, *size, requires_grad=True)

    def full_kernel_forward():
        out = block.origin_bn(block.lk_origin(x))
        for name in block.branch_names:
            out = out + getattr(block, f"dil_bn_{name}")(getattr(block, f"dil_conv_{name}")(x))
        return out

    outputs, grads = [], []
    for forward in (block, full_kernel_forward):
        out = forward(x) if forward is block else forward()
        outputs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [x, *block.parameters()]))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-6, atol=1e-6)
    for cropped, full in zip(*grads):
        torch.testing.assert_close(cropped, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,r", [(3, 2), (5, 3), (3, 7), (9, 2)])
def test_dilate_kernel_matches_dilated_conv(k, r):
    kernel = torch.randn(4, 1, k, k)
    x = torch.randn(1, 4, 40, 40)
    size = (k - 1) * r + 1
    dense = dilate_kernel(kernel, r)
    assert dense.shape[-1] == size
    assert torch.count_nonzero(dense) == torch.count_nonzero(kernel)
    dilated = nn.functional.conv2d(x, kernel, padding=size // 2, dilation=r, groups=4)
    plain = nn.functional.conv2d(x, pad_kernel(dense, size + 4), padding=(size + 4) // 2, groups=4)
    assert torch.allclose(dilated, plain, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [3, 13])
def test_every_parameter_receives_a_gradient(kernel_size):
    torch.manual_seed(0)
    model = core.create_backbone("unireplknet_test", num_classes=5, kernel_size=kernel_size, drop_path_rate=0.1)
    with torch.no_grad():  # GRN gamma/beta start at 0, which would zero some gradient paths
        for m in model.modules():
            if isinstance(m, GRN):
                m.gamma.fill_(0.1)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_default_kernel_sizes_of_the_published_variants():
    t = build_meta("unireplknet_t").kernel_sizes
    assert t[0] == (3, 3, 3) and t[1] == (13, 13, 13) and t[3] == (13, 13, 13)
    assert t[2] == (13, 3) * 9
    s = build_meta("unireplknet_s").kernel_sizes
    assert s[2] == (13, 3, 3) * 9 and sum(k == 13 for k in s[2]) == 9
    a = build_meta("unireplknet_a").kernel_sizes
    assert a == ((3, 3), (13, 13), (13,) * 6, (13, 13))
    n = build_meta("unireplknet_n", kernel_size=11).kernel_sizes
    assert n == ((3, 3), (11, 11), (11,) * 8, (11, 11))


def test_kernel_sizes_full_override_and_errors():
    ks = ((3,), (5,), (0, 17), (7,))
    model = core.create_backbone("unireplknet_test", kernel_sizes=ks)
    assert model.kernel_sizes == ks
    assert isinstance(model.stages[2][0].dwconv, nn.Identity)
    assert isinstance(model.stages[1][0].dwconv, nn.Conv2d) and model.stages[1][0].dwconv.kernel_size == (5, 5)
    assert isinstance(model.stages[2][1].dwconv, core.DilatedReparamBlock)
    with pytest.raises(ValueError, match="one kernel size per block"):
        core.create_backbone("unireplknet_test", kernel_sizes=((3,), (5,), (7,), (7,)))
    with pytest.raises(ValueError, match="either kernel_size"):
        core.create_backbone("unireplknet_test", kernel_size=13, kernel_sizes=ks)


@pytest.mark.parametrize("bad", [1, 4, 19, 21, -3])
def test_unsupported_kernel_size_names_the_allowed_values(bad):
    with pytest.raises(ValueError, match=r"allowed values are \[0, 3, 5, 7, 9, 11, 13, 15, 17\]"):
        core.create_backbone("unireplknet_test", kernel_size=bad)


def test_wrong_input_channels_give_a_clear_error():
    model = core.create_backbone("unireplknet_test", in_chans=1, num_classes=3)
    with pytest.raises(ValueError, match=r"expects a B x 1 x H x W input .* shape \(2, 3, 32, 32\)"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="expects a B x 1 x H x W"):
        model(torch.randn(1, 32, 32))


def test_unknown_keyword_raises_type_error():
    with pytest.raises(TypeError, match="drop_path_rat"):
        core.create_backbone("unireplknet_test", drop_path_rat=0.1)
    with pytest.raises(TypeError, match="kernel_szie"):
        timm.create_model("unireplknet_a", kernel_szie=11)
    with pytest.raises(TypeError, match="depths"):
        core.create_backbone("unireplknet_a", depths=(1, 1, 1, 1))


def test_backbone_api_shapes():
    model = core.create_backbone("unireplknet_test", in_chans=2, num_classes=7).eval()
    x = torch.randn(2, 2, 64, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 128, 2, 3)
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, model.num_features) == (2, 128)
        logits = model(x)
        assert logits.shape == (2, 7)
        assert torch.allclose(model.head(pooled), logits, atol=1e-6)
        maps = model.forward_intermediates(x, intermediates_only=True)
        assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6), (2, 128, 2, 3)]
        last, some = model.forward_intermediates(x, indices=[1, 3])
        assert torch.allclose(last, feats) and len(some) == 2 and torch.allclose(some[1], feats)
    model.reset_classifier(0)
    assert model(x).shape == (2, 128)
    model.reset_classifier(11)
    assert model(x).shape == (2, 11)


def test_num_classes_zero_gives_pooled_features():
    model = core.create_backbone("unireplknet_test", num_classes=0).eval()
    assert isinstance(model.head, nn.Identity)
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, model.num_features)
    # pooled features pass through the final LayerNorm: zero mean, unit variance per sample
    assert torch.allclose(out.mean(dim=1), torch.zeros(3), atol=1e-4)


def test_gradient_checkpointing_gives_same_output_and_gradients():
    torch.manual_seed(0)
    model = core.create_backbone("unireplknet_test", num_classes=4)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-6), n


def test_timm_registry():
    names = timm.list_models("unireplknet_*")
    assert set(names) >= {f"unireplknet_{v}" for v in PUBLISHED}
    model = timm.create_model("unireplknet_s", in_chans=1, num_classes=35)
    assert isinstance(model, core.UniRepLKNet)
    assert model.in_chans == 1 and model.head.out_features == 35 and model.dims == VARIANTS["s"]["dims"]
    assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    features = timm.create_model("unireplknet_test", features_only=True)
    outs = features(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 32, 64, 128]
    assert features.feature_info.reduction() == [4, 8, 16, 32]


def test_pretrained_without_a_file_refuses_to_download():
    with pytest.raises(RuntimeError, match="never downloaded"):
        timm.create_model("unireplknet_a", pretrained=True)


def test_factory_lists_and_rejects():
    names = core.list_backbones()
    assert {"unireplknet_a", "unireplknet_xl", "unireplknet_test", "resnet101", "convnext_s"} <= set(names)
    with pytest.raises(ValueError, match="valid choices: .*unireplknet_a.*resnet101"):
        core.create_backbone("unireplknet_z")
    with pytest.raises(ValueError, match="fixed kernel size of 7"):
        core.create_backbone("convnext_s", kernel_size=13)
    with pytest.raises(ValueError, match="UniRepLKNet only"):
        core.create_backbone("resnet101", deploy=True)


@pytest.mark.parametrize("name,width", [("resnet101", 2048), ("convnext_s", 768), ("resnet18", 512), ("convnext_atto", 320)])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_baselines(name, width, in_chans):
    model = core.create_backbone(name, in_chans=in_chans, num_classes=0).eval()
    x = torch.randn(2, in_chans, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, width) and model.num_features == width
        assert model.forward_features(x).shape[:2] == (2, width)
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert maps[-1].shape[1] == width
    assert core.reparameterize(model) is model  # a no-op for models without re-parameterizable blocks
    head = core.create_backbone(name, in_chans=in_chans, num_classes=6)
    assert head(x).shape == (2, 6)


@pytest.fixture
def restored_timm_registry():
    """Undo any registration a test makes in timm's global registry."""
    from timm.models import _registry

    saved = {name: copy.deepcopy(value) for name, value in vars(_registry).items()
             if name.startswith(("_model", "_module", "_deprecated"))}
    yield
    for name, value in saved.items():
        setattr(_registry, name, value)


def test_factory_is_not_hijacked_by_a_foreign_timm_registration(restored_timm_registry, monkeypatch):
    """A module that registers the project's names in timm (the public UniRepLKNet file does, on import) changes
    what ``timm.create_model`` returns, never what ``core.create_backbone`` builds."""

    class ForeignUniRepLKNet(nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            self.fc = nn.Linear(3, 7)

    def unireplknet_a(pretrained=False, **kwargs):
        return ForeignUniRepLKNet(**kwargs)

    def resnet18(pretrained=False, **kwargs):
        return ForeignUniRepLKNet(**kwargs)

    monkeypatch.setitem(sys.modules, "foreign_unireplknet", types.ModuleType("foreign_unireplknet"))
    unireplknet_a.__module__ = resnet18.__module__ = "foreign_unireplknet"
    with pytest.warns(UserWarning, match="Overwriting"):
        timm.models.register_model(unireplknet_a)
        timm.models.register_model(resnet18)
    assert isinstance(timm.create_model("unireplknet_a"), ForeignUniRepLKNet)  # the registry was taken over

    model = core.create_backbone("unireplknet_a", num_classes=10)
    assert type(model) is core.UniRepLKNet and model.head.out_features == 10
    assert [len(stage) for stage in model.stages] == [2, 2, 6, 2] and model.num_features == 320
    baseline = core.create_backbone("resnet18", in_chans=1)
    assert type(baseline) is timm.models.ResNet and baseline.conv1.in_channels == 1
