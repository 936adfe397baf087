"""The fast inference path: FastUniRepLKNet equals the eval-mode training structure (logits and features, every
block kind, both depthwise memory formats, every FFN form), eager and compiled, at batch and input sizes other
than the example's; optimize_for_inference chooses among candidates, drops (and names) the ones that fail or
mismatch, leaves the original untouched, records its choices and rejects bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import core
from core.backbones import fast as fast_module
from core.backbones.fast import (
    GRN_NORM_FORMS,
    GRN_SCALE_FORMS,
    LINEAR_GELU_FORMS,
    FastBlock,
    FastUniRepLKNet,
    compile_model,
    optimize_for_inference,
    to_fast_model,
)
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


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(core.create_backbone("unireplknet_test", in_chans=3, num_classes=10), seed=seed).eval()


def set_dw_format(fast: nn.Module, dw_format: str) -> dict[str, str]:
    """Every depthwise conv of ``fast`` in ``dw_format``; returns the choice as ``choose_dw_formats`` would."""
    chosen = {}
    for name, block in fast.named_modules():
        if isinstance(block, FastBlock):
            block.dw_channels_first = dw_format == "nchw"
            chosen[name] = dw_format
    return chosen


def force_dw_format(monkeypatch, dw_format: str) -> None:
    """Make optimize_for_inference use ``dw_format`` for every depthwise conv instead of timing them."""
    monkeypatch.setattr(fast_module, "choose_dw_formats", lambda fast, x, repeats=3: set_dw_format(fast, dw_format))


# the example's batch size is 2; calls at other batch sizes and another input size must give the same outputs
OTHER_SHAPES = [(1, 3, 64, 64), (3, 3, 64, 64), (2, 3, 96, 64)]


def assert_equal_at_other_shapes(fast: nn.Module, model: nn.Module) -> None:
    torch.manual_seed(7)
    for shape in OTHER_SHAPES:
        x = torch.randn(shape)
        with torch.inference_mode():
            assert close(fast(x), model(x), rtol=1e-4), shape


@pytest.fixture
def fresh_dynamo():
    """Compile tests start from empty Dynamo caches: the compiled graphs of earlier tests count towards the
    recompile limit of the same forward, past which Dynamo silently runs it eagerly."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("linear_gelu", LINEAR_GELU_FORMS)
def test_every_ffn_form_equals_training_structure(linear_gelu):
    """Each form is the same algebra: outputs equal the eval model's for every GRN norm and scale form ("auto"
    folds the scale into the weight on the 16 x 16 maps of stage 1 and scales the 2 x 2 maps of stage 4)."""
    model = tiny_model(4)
    fast = to_fast_model(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        for grn_norm in GRN_NORM_FORMS:
            for grn_scale in GRN_SCALE_FORMS:
                for block in fast.modules():
                    if isinstance(block, FastBlock):
                        block.linear_gelu_form, block.grn_norm_form = linear_gelu, grn_norm
                        block.grn_scale_form = grn_scale
                assert close(fast(x), expected), (grn_norm, grn_scale)


def test_unknown_ffn_form_is_an_error():
    fast = to_fast_model(tiny_model())
    block = next(m for m in fast.modules() if isinstance(m, FastBlock))
    block.grn_scale_form = "diagonal"
    with pytest.raises(ValueError, match="unknown grn_scale_form 'diagonal'"):
        fast(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("dw_format", ["nchw", "channels_last"])
def test_forced_dw_format_eager_at_other_batch_and_input_sizes(monkeypatch, dw_format):
    force_dw_format(monkeypatch, dw_format)
    model = tiny_model(5)
    fast = optimize_for_inference(model, torch.randn(2, 3, 64, 64), candidates=("eager",), repeats=1)
    assert set(fast.inference_choice["dw_formats"].values()) == {dw_format}
    assert_equal_at_other_shapes(fast, model)


def test_compile_with_nchw_dw_convs_at_other_batch_and_input_sizes(monkeypatch, fresh_dynamo):
    """Regression: with NCHW depthwise convs the compiled FFN input had NCHW strides and Inductor failed to view
    it as a matrix; optimize_for_inference let the error escape. The compiled candidate must now build, pass
    the check at batch 2 and 3 and then recompile for batch 1 and another input size."""
    force_dw_format(monkeypatch, "nchw")
    model = tiny_model(6)
    fast = optimize_for_inference(model, torch.randn(2, 3, 64, 64), candidates=("compile",), repeats=1)
    choice = fast.inference_choice
    assert choice["chosen"] == "compile" and choice["rejected"] == {} and not choice["fallback"]
    assert choice["checked_shapes"] == [(2, 3, 64, 64), (3, 3, 64, 64)]
    assert not isinstance(fast, FastUniRepLKNet)  # the torch.compile wrapper
    assert_equal_at_other_shapes(fast, model)


def test_channels_last_deploy_structure_equals_the_model():
    model = tiny_model(12)
    deploy = fast_module.ChannelsLastDeploy(model)
    assert any(isinstance(m, core.DilatedReparamBlock) for m in model.modules())  # the original untouched
    assert not any(hasattr(m, "origin_bn") for m in deploy.modules())  # re-parameterized
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert close(deploy(x), model.eval()(x), rtol=1e-5)


@pytest.mark.slow
def test_compiled_deploy_structure_is_a_candidate(fresh_dynamo):
    model = tiny_model(13)
    fast = optimize_for_inference(model, torch.randn(2, 3, 64, 64), candidates=("deploy_compile_frozen",), repeats=1)
    assert fast.inference_choice["chosen"] == "deploy_compile_frozen" and fast.inference_choice["rejected"] == {}
    assert_equal_at_other_shapes(fast, model)


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "dw_format"), [
    ("compile", "channels_last"), ("compile_frozen", "nchw"), ("compile_frozen", "channels_last"),
])
def test_compiled_forced_dw_format_at_other_batch_and_input_sizes(monkeypatch, fresh_dynamo, mode, dw_format):
    force_dw_format(monkeypatch, dw_format)
    model = tiny_model(7)
    fast = optimize_for_inference(model, torch.randn(2, 3, 64, 64), candidates=(mode,), repeats=1)
    assert fast.inference_choice["chosen"] == mode and fast.inference_choice["rejected"] == {}
    assert_equal_at_other_shapes(fast, model)


@pytest.mark.slow
@pytest.mark.parametrize("dw_format", ["nchw", "channels_last"])
def test_compiled_from_a_batch_of_one_runs_a_batch_of_32(monkeypatch, fresh_dynamo, dw_format):
    """Regression: with a batch-1 example, the compiled model crashed on a batch of 32."""
    force_dw_format(monkeypatch, dw_format)
    model = tiny_model(8)
    fast = optimize_for_inference(model, torch.randn(1, 3, 64, 64), candidates=("compile",), repeats=1)
    assert fast.inference_choice["chosen"] == "compile"
    assert fast.inference_choice["checked_shapes"] == [(1, 3, 64, 64), (2, 3, 64, 64)]
    x = torch.randn(32, 3, 64, 64)
    with torch.inference_mode():
        assert close(fast(x), model(x), rtol=1e-4)


def test_optimize_for_inference_keeps_original_and_checks_output():
    torch.manual_seed(0)
    model = randomize(core.create_backbone("unireplknet_test", num_classes=10)).train()
    x = torch.randn(2, 3, 64, 64)
    fast = optimize_for_inference(model, x, candidates=("eager",), repeats=1)
    assert model.training  # the original keeps its mode and structure
    assert any(isinstance(m, core.DilatedReparamBlock) for m in model.modules())
    choice = fast.inference_choice
    assert choice["chosen"] == "eager" and set(choice["seconds"]) == {"eager"}
    assert choice["rejected"] == {} and not choice["fallback"]
    assert set(choice["dw_formats"].values()) <= {"nchw", "channels_last"} and len(choice["dw_formats"]) == 5
    assert len(choice["ffn_forms"]) == 5
    for name, forms in choice["ffn_forms"].items():
        block = fast.get_submodule(name)
        assert forms["linear_gelu"] == block.linear_gelu_form in LINEAR_GELU_FORMS
        assert forms["grn_norm"] == block.grn_norm_form in GRN_NORM_FORMS
        assert forms["grn_scale"] == block.grn_scale_form in ("weight", "map")
    assert not any(isinstance(m, core.UniRepLKNetBlock) for m in fast.modules())
    with torch.no_grad():
        assert close(fast(x), model.eval()(x))
    default = optimize_for_inference(model)  # no example input: no timing, default forms
    assert isinstance(default, FastUniRepLKNet)
    block = next(m for m in default.modules() if isinstance(m, FastBlock))
    assert (block.dw_channels_first, block.linear_gelu_form, block.grn_norm_form, block.grn_scale_form) == (
        False, "fused_linear", "square_sum", "auto")
    with pytest.raises(ValueError, match="candidates must be drawn from"):
        optimize_for_inference(model, x, candidates=("tensorrt",))
    with pytest.raises(TypeError, match="example_input must be a tensor"):
        optimize_for_inference(model, [x])
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        optimize_for_inference(model, x, repeats=0)


def patch_compile_model(monkeypatch, replacements: dict) -> None:
    """compile_model with the given modes replaced: mode -> function of the fast model."""
    real = fast_module.compile_model
    monkeypatch.setattr(
        fast_module, "compile_model", lambda model, mode: replacements[mode](model) if mode in replacements
        else real(model, mode),
    )


def fail(model: nn.Module) -> nn.Module:
    raise RuntimeError("Inductor could not lower the graph")


class Perturbed(nn.Module):
    """A candidate whose output is off by ``delta`` relative: at every batch size, or (``other_batch_only``) at
    every batch size but the example's 2."""

    def __init__(self, model: nn.Module, delta: float, other_batch_only: bool = False):
        super().__init__()
        self.model, self.delta, self.other_batch_only = model, delta, other_batch_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.other_batch_only and x.shape[0] == 2:
            return out
        return out + self.delta * out.abs().max()


def test_a_candidate_that_raises_is_dropped_and_named(monkeypatch):
    patch_compile_model(monkeypatch, {"compile": fail})
    model = tiny_model(9)
    with pytest.warns(RuntimeWarning, match="dropped candidate 'compile'"):
        fast = optimize_for_inference(model, torch.randn(2, 3, 64, 64), candidates=("eager", "compile"), repeats=1)
    choice = fast.inference_choice
    assert choice["chosen"] == "eager" and set(choice["seconds"]) == {"eager"} and not choice["fallback"]
    assert choice["rejected"] == {"compile": "RuntimeError: Inductor could not lower the graph"}


@pytest.mark.parametrize("other_batch_only", [False, True])
def test_a_candidate_that_mismatches_is_dropped(monkeypatch, other_batch_only):
    """Off by 1e-3 relative (over rtol 1e-4), at every batch size or only at the batch size after the example's:
    dropped with the measured error; a candidate off by 1e-6 relative passes. The deploy_ candidates go through
    the same compile modes (of the channels_last deploy structure)."""
    patch_compile_model(monkeypatch, {
        "compile": lambda m: Perturbed(m, 1e-3, other_batch_only),
        "compile_frozen": lambda m: Perturbed(m, 1e-6),
    })
    model = tiny_model(10)
    with pytest.warns(RuntimeWarning, match="dropped candidate 'compile'"):
        fast = optimize_for_inference(model, torch.randn(2, 3, 64, 64), repeats=1)
    choice = fast.inference_choice
    assert set(choice["rejected"]) == {"compile", "deploy_compile"}
    assert set(choice["seconds"]) == {"eager", "compile_frozen", "deploy_compile_frozen"}
    shape = "(3, 3, 64, 64)" if other_batch_only else "(2, 3, 64, 64)"
    assert choice["rejected"]["compile"].startswith("mismatch: output differs from the original by")
    assert choice["rejected"]["compile"].endswith(f"at input shape {shape}")


def test_every_candidate_failing_falls_back_to_eager_or_raises(monkeypatch):
    patch_compile_model(monkeypatch, {"compile": fail, "compile_frozen": lambda m: Perturbed(m, 1.0)})
    model = tiny_model(11)
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(RuntimeWarning):
        fast = optimize_for_inference(model, x, candidates=("compile", "compile_frozen"), repeats=1)
    choice = fast.inference_choice
    assert isinstance(fast, FastUniRepLKNet) and choice["chosen"] == "eager" and choice["fallback"]
    assert set(choice["rejected"]) == {"compile", "compile_frozen"} and choice["seconds"] == {}
    with torch.no_grad():
        assert close(fast(x), model(x))
    # the eager fast model itself wrong: a clear error naming every reason
    monkeypatch.setattr(FastUniRepLKNet, "forward", lambda self, x: torch.zeros(x.shape[0], 10))
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="every candidate failed.*'compile'.*"
                                                                         "so does the eager fast model: mismatch"):
        optimize_for_inference(model, x, candidates=("compile", "compile_frozen"), repeats=1)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="every candidate failed.*'eager': 'mismatch"):
        optimize_for_inference(model, x, candidates=("eager",), repeats=1)


def test_compile_model_modes():
    model = nn.Linear(2, 2)
    assert compile_model(model, "eager") is model
    with pytest.raises(ValueError, match="unknown mode 'jit'; valid choices: eager, compile, compile_frozen"):
        compile_model(model, "jit")
