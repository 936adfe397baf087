"""The fast inference path: FastBlock models equal the eval-mode training structure; optimize_for_inference
chooses among candidates, leaves the original untouched and records its choice."""

from __future__ import annotations

import pytest
import torch

import core
from core.backbones.fast import FastBlock, optimize_for_inference, to_fast_blocks
from tests.test_backbone import randomize


@pytest.mark.parametrize("kernel_size", [0, 3, 13])
@pytest.mark.parametrize("size", [32, 96])  # small maps (scale on the map) and large maps (scale in the weights)
def test_fast_blocks_equal_training_structure(kernel_size, size):
    torch.manual_seed(kernel_size)
    model = randomize(core.create_backbone("unireplknet_test", num_classes=10, kernel_size=kernel_size)).eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        fast = to_fast_blocks(model)
        got = fast(x)
    assert sum(isinstance(m, FastBlock) for m in fast.modules()) == 5
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_optimize_for_inference_keeps_original_and_checks_output():
    torch.manual_seed(0)
    model = randomize(core.create_backbone("unireplknet_test", num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    fast = optimize_for_inference(model, x, candidates=("eager",), repeats=1)
    assert fast.inference_choice["chosen"] == "eager"
    assert any(isinstance(m, core.DilatedReparamBlock) for m in model.modules())  # original untouched
    assert not any(isinstance(m, core.UniRepLKNetBlock) for m in fast.modules())
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), rtol=0, atol=1e-5 * model(x).abs().max().item())
    with pytest.raises(ValueError, match="candidates must be drawn from"):
        optimize_for_inference(model, x, candidates=("tensorrt",))
