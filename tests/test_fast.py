"""The fast inference path: FastUniRepLKNet equals the eval-mode training structure (logits and features, every
block kind, both depthwise memory formats, both GRN/SE folding branches); optimize_for_inference chooses among
candidates, leaves the original untouched, records its choices and rejects bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import core
from core.backbones.fast import FastBlock, FastUniRepLKNet, compile_model, optimize_for_inference, to_fast_model
from tests.test_backbone import randomize


def close(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> bool:
    return bool((got - expected).abs().max() <= rtol * expected.abs().max())


@pytest.mark.parametrize("kernel_size", [0, 3, 13])
# GRN scale on the map / in the weights; 128: 32 x 32 stage-1 maps (the FFN's first product as a 1x1 conv)
@pytest.mark.parametrize("size", [32, 96, 128])
@pytest.mark.parametrize("dw_channels_first", [False, True])
def test_fast_model_equals_training_structure(kernel_size, size, dw_channels_first):
    torch.manual_seed(kernel_size)
    model = randomize(core.create_backbone("unireplknet_test", num_classes=10, kernel_size=kernel_size)).eval()
    x = torch.randn(3, 3, size, size)
    fast = to_fast_model(model)
    for block in fast.modules():
        if isinstance(block, FastBlock):
            block.dw_channels_first = dw_channels_first
    with torch.no_grad():
        assert close(fast(x), model(x))
        assert close(fast.forward_features(x), model.forward_features(x))
        assert close(fast.forward_head(fast.forward_features(x), pre_logits=True),
                     model.forward_head(model.forward_features(x), pre_logits=True))
    assert sum(isinstance(m, FastBlock) for m in fast.modules()) == 5
    assert not any(p.requires_grad for p in fast.parameters())
    assert any(isinstance(m, core.DilatedReparamBlock) for m in model.modules()) == (kernel_size >= 7)


def test_fast_model_features_only_and_other_input_channels():
    torch.manual_seed(1)
    model = randomize(core.create_backbone("unireplknet_test", in_chans=1, num_classes=0)).eval()
    x = torch.randn(2, 1, 64, 48)  # non-square input, pooled features
    fast = to_fast_model(model)
    with torch.no_grad():
        assert close(fast(x), model(x))
    assert fast.num_features == model.num_features
    with pytest.raises(ValueError, match="expects a B x 1 x H x W"):
        fast(torch.randn(2, 3, 64, 64))


def test_fast_model_inside_a_wrapper_and_errors():
    torch.manual_seed(2)
    wrapper = nn.Sequential(nn.Conv2d(2, 3, 1), randomize(core.create_backbone("unireplknet_test", num_classes=4)))
    wrapper.eval()
    fast = to_fast_model(wrapper)
    assert isinstance(fast[1], FastUniRepLKNet) and isinstance(wrapper[1], core.UniRepLKNet)
    x = torch.randn(2, 2, 64, 64)
    with torch.no_grad():
        assert close(fast(x), wrapper(x))
    with pytest.raises(TypeError, match="contains no UniRepLKNet"):
        to_fast_model(nn.Linear(2, 2))


def test_optimize_for_inference_keeps_original_and_checks_output():
    torch.manual_seed(0)
    model = randomize(core.create_backbone("unireplknet_test", num_classes=10)).train()
    x = torch.randn(2, 3, 64, 64)
    fast = optimize_for_inference(model, x, candidates=("eager",), repeats=1)
    assert model.training  # the original keeps its mode and structure
    assert any(isinstance(m, core.DilatedReparamBlock) for m in model.modules())
    choice = fast.inference_choice
    assert choice["chosen"] == "eager" and set(choice["seconds"]) == {"eager"}
    assert set(choice["dw_formats"].values()) <= {"nchw", "channels_last"} and len(choice["dw_formats"]) == 5
    assert not any(isinstance(m, core.UniRepLKNetBlock) for m in fast.modules())
    with torch.no_grad():
        assert close(fast(x), model.eval()(x))
    assert isinstance(optimize_for_inference(model), FastUniRepLKNet)  # no example input: no timing
    with pytest.raises(ValueError, match="candidates must be drawn from"):
        optimize_for_inference(model, x, candidates=("tensorrt",))
    with pytest.raises(TypeError, match="example_input must be a tensor"):
        optimize_for_inference(model, [x])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["compile", "compile_frozen"])
def test_optimize_for_inference_with_compile_candidate(mode):
    """torch.compile of the fast model (the fused oneDNN Linear+GELU is left to inductor), with and without
    Inductor's weight freezing, gives the same outputs."""
    torch.manual_seed(3)
    model = randomize(core.create_backbone("unireplknet_test", num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    fast = optimize_for_inference(model, x, candidates=(mode,), repeats=1)
    assert fast.inference_choice["chosen"] == mode
    with torch.no_grad():
        assert close(fast(x), model(x), rtol=1e-4)


def test_compile_model_modes():
    model = nn.Linear(2, 2)
    assert compile_model(model, "eager") is model
    with pytest.raises(ValueError, match="unknown mode 'jit'; valid choices: eager, compile, compile_frozen"):
        compile_model(model, "jit")
