"""The Section 3 architecture ablations as backbone options (Tables 1, 2 and 4): parameter counts against the
paper, exact re-parameterization for every option, the published structure as the default, and clear errors.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import core
from core.backbones import unireplknet as url
from core.backbones.unireplknet import UniRepLKNet, create_unireplknet


def params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, layer scales and GRN terms, so that fusing them is tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
        for name, param in model.named_parameters():
            if name.endswith(("gamma", "beta")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1 + (1.0 if name.endswith("gamma") and param.dim() == 1 else 0.0))
    return model


# --- Table 1 / Table 4: parameter counts of the paper's models (deploy structure, 1000 classes) -------------

# the shallow model of Tables 1-3 is UniRepLKNet-S with nine LarK blocks in stage 3
SHALLOW = [None, None, "L*9", None]


@pytest.mark.parametrize("extra, paper_m", [("none", 31.3), ("bottleneck", 32.9), ("two_1x1", 32.9),
                                            ("two_dw3x3", 31.4), ("se", 32.9)])
def test_table1_parameter_counts(extra, paper_m):
    model = create_unireplknet("s", stage_layouts=SHALLOW, extra_structure=extra, deploy=True)
    assert params_m(model) == pytest.approx(paper_m, abs=0.1)


@pytest.mark.parametrize("layout, lark, smak, paper_m", [("L*9", 9, 0, 32.9), ("L*27", 27, 0, 56.7),
                                                         ("LS*13+L", 14, 13, 55.9), ("LSS*9", 9, 18, 55.6),
                                                         ("LNN*9", 9, 0, 55.5)])
def test_table4_layouts_and_parameter_counts(layout, lark, smak, paper_m):
    model = create_unireplknet("s", stage_layouts=[None, None, layout, None], deploy=True)
    stage3 = model.kernel_sizes[2]
    assert (sum(k == 13 for k in stage3), sum(k == 3 for k in stage3)) == (lark, smak)
    assert model.depths == (3, 3, len(stage3), 3)
    assert params_m(model) == pytest.approx(paper_m, abs=0.1)


def test_published_layout_equals_the_default_s():
    assert url.layout_kernel_sizes("s", [None, None, "LSS*9", None])[1] == [list(s) for s in url.default_kernel_sizes((3, 3, 27, 3))]
    depths, kernels = url.layout_kernel_sizes("test", [None, "N", "LNN", "S"], kernel_size=11)
    assert depths == (1, 1, 3, 1) and kernels == [[3], [0], [11, 0, 0], [3]]


def test_parse_layout_and_its_errors():
    assert url.parse_layout("LS*2+L") == "LSLSL"
    assert url.parse_layout("lss") == "LSS"
    for bad in ("", "LX", "L*x", "*3"):
        with pytest.raises(ValueError, match="stage layout"):
            url.parse_layout(bad)
    with pytest.raises(ValueError, match="one entry per stage"):
        create_unireplknet("test", stage_layouts=["L", "L"])
    with pytest.raises(ValueError, match="not both"):
        create_unireplknet("test", stage_layouts=[None] * 4, kernel_sizes=[[3], [13], [13, 3], [13]])


# --- Table 2: branch lists ---------------------------------------------------------------------------------------


def test_table2_branch_forms_for_k13():
    assert url.reparam_branches(13, "dilated") == ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5))
    assert url.reparam_branches(13, "same_kernel") == ((5, 1), (7, 1), (3, 1), (3, 1), (3, 1))
    assert url.reparam_branches(13, "same_eq_kernel") == ((5, 1), (13, 1), (7, 1), (9, 1), (11, 1))  # paper's k
    assert url.reparam_branches(13, "none") == ()
    assert url.reparam_branches(13, [[5, 1], [3, 6]]) == ((5, 1), (3, 6))


def test_repeated_branches_get_distinct_names_and_published_names_stay():
    block = url.DilatedReparamBlock(8, 13, branches=url.reparam_branches(13, "same_kernel"))
    names = {n for n, _ in block.named_children() if n.startswith("dil_conv")}
    assert names == {"dil_conv_k5_1", "dil_conv_k7_1", "dil_conv_k3_1", "dil_conv_k3_1_2", "dil_conv_k3_1_3"}
    published = url.DilatedReparamBlock(8, 13)
    assert {n for n, _ in published.named_children() if n.startswith("dil_conv")} == {
        "dil_conv_k5_1", "dil_conv_k7_2", "dil_conv_k3_3", "dil_conv_k3_4", "dil_conv_k3_5"}


def test_bad_reparam_options_say_what_is_expected():
    with pytest.raises(ValueError, match="valid choices: dilated, none, same_kernel, same_eq_kernel"):
        create_unireplknet("test", reparam="big")
    with pytest.raises(ValueError, match=r"\(k=7, r=3\) does not fit a 13 x 13 kernel"):
        create_unireplknet("test", reparam=[[7, 3]])
    with pytest.raises(ValueError, match="k must be odd"):
        create_unireplknet("test", reparam=[[4, 1]])
    with pytest.raises(ValueError, match="valid choices: se, none, bottleneck"):
        create_unireplknet("test", extra_structure="mlp")


# --- every option: the default is the published structure; re-parameterization is exact ------------------------


def test_defaults_are_the_published_structure():
    plain = create_unireplknet("s")
    explicit = create_unireplknet("s", extra_structure="se", reparam="dilated", stage_layouts=[None, None, "LSS*9", None])
    assert list(plain.state_dict()) == list(explicit.state_dict())
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in explicit.state_dict().items()}


OPTIONS = [
    dict(extra_structure="none"), dict(extra_structure="bottleneck"), dict(extra_structure="two_1x1"),
    dict(extra_structure="two_dw3x3"), dict(reparam="none"), dict(reparam="same_kernel"),
    dict(reparam="same_eq_kernel"), dict(reparam=[[5, 1], [3, 6], [3, 6]]),
    dict(stage_layouts=[None, None, "LNN", None]), dict(stage_layouts=["L", "LS", "LS+L", "S"], kernel_size=11),
    dict(extra_structure="bottleneck", reparam="same_eq_kernel", stage_layouts=[None, None, "LLL", None]),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_reparameterization_is_exact_for_every_option(options):
    torch.manual_seed(0)
    model = randomize_bn(create_unireplknet("test", num_classes=5, in_chans=2, **options)).eval()
    x = torch.randn(2, 2, 64, 48)
    with torch.no_grad():
        before = model(x)
        deployed = core.reparameterize(model)
        after = deployed(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-4), (before - after).abs().max()
    # the deploy structure built directly holds exactly the re-parameterized weights
    direct = create_unireplknet("test", num_classes=5, in_chans=2, deploy=True, **options)
    direct.load_state_dict(deployed.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(direct.eval()(x), after)


def test_an_option_trains_and_its_checkpoint_filter_rebuilds_it():
    """A training-structure state dict of an ablation model loads into its deploy twin (checkpoint_filter_fn)."""
    torch.manual_seed(0)
    options = dict(extra_structure="two_1x1", reparam="same_kernel")
    model = create_unireplknet("test", num_classes=3, **options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = model(torch.randn(4, 3, 64, 64)).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    deploy = create_unireplknet("test", num_classes=3, deploy=True, **options)
    deploy.load_state_dict(deploy.checkpoint_filter_fn(model.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), deploy.eval()(x), atol=1e-5)


def test_fast_path_refuses_a_table1_block_with_a_clear_message():
    from core.backbones.fast import FastUniRepLKNet

    model = create_unireplknet("test", extra_structure="two_dw3x3").eval().reparameterize()
    with pytest.raises(ValueError, match="extra_structure='two_dw3x3'"):
        FastUniRepLKNet(model)


def test_options_reach_the_model_through_create_backbone():
    model = core.create_backbone("unireplknet_test", in_chans=1, reparam="none", extra_structure="none",
                                 stage_layouts=[None, None, "LSS", None])
    assert isinstance(model, UniRepLKNet) and model.kernel_sizes[2] == (13, 3, 3)
    assert model.stages[2][0].dwconv.branches == () and isinstance(model.stages[2][0].se, nn.Identity)
    with pytest.raises(TypeError):
        core.create_backbone("resnet18", reparam="none")
