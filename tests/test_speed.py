"""Training-speed options of the harness (``speed.channels_last``, ``speed.compile``): same values as the default
structure, checkpoint keys unchanged, the deploy step runs eagerly; and the depthwise-convolution benchmark's
alternative methods (im2col + GEMM, FFT) equal oneDNN's convolution."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from core.tasks import ClassificationTask
from experiments import benchmark, harness
from experiments.benchmark_dwconv import dw_shapes, fft_conv, im2col_gemm, run_dwconv
from experiments.benchmark_modalities import SPEED_VARIANTS

ADAPTER = {"_target_": "modalities.image.adapter.ImageAdapter"}


def _task(seed: int = 0) -> ClassificationTask:
    torch.manual_seed(seed)
    return ClassificationTask(adapter=ADAPTER, backbone={"name": "unireplknet_test"}, num_classes=5).eval()


def test_channels_last_keeps_values_and_keys():
    plain, fast = _task(), _task()
    x = torch.randn(2, 3, 32, 32)
    applied = harness.apply_speed(fast, {"channels_last": True, "compile": False})
    assert applied == {"channels_last": True, "compile": False, "threads": torch.get_num_threads()}
    stem = next(m for m in fast.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)


def test_compiled_backbone_keeps_keys_and_deploy_copy_runs_eagerly():
    task = _task()
    reference = copy.deepcopy(task)
    harness.apply_speed(task, {"compile": True})
    assert task.backbone._compiled_call_impl is not None
    assert task.state_dict().keys() == reference.state_dict().keys()
    harness.run_eagerly(task)
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in task.modules())
    twin = copy.deepcopy(task)
    with torch.no_grad():  # the copy has its own weights: changing them changes its output only
        twin.backbone.head.weight.add_(1.0)
        x = torch.randn(2, 3, 32, 32)
        assert not torch.allclose(twin(x), task(x))
        torch.testing.assert_close(task(x), reference(x))


def test_threads_option_sets_the_intra_op_thread_count():
    before = torch.get_num_threads()
    try:
        assert harness.apply_speed(_task(), {"threads": 1})["threads"] == 1 and torch.get_num_threads() == 1
        with pytest.raises(harness.ConfigError, match="speed.threads must be null or a positive integer, got 0"):
            harness.apply_speed(_task(), {"threads": 0})
    finally:
        torch.set_num_threads(before)
    assert harness.apply_speed(_task(), {"threads": None})["threads"] == before


def test_unknown_speed_option_is_named():
    with pytest.raises(harness.ConfigError, match=r"unknown speed option\(s\) \['bf16'\]"):
        harness.apply_speed(_task(), {"bf16": True})


def test_speed_variants_compose_as_run_overrides():
    from experiments.benchmark_modalities import compose_modality

    for overrides in SPEED_VARIANTS.values():
        cfg = compose_modality("image", overrides)
        assert set(cfg.speed) == {"channels_last", "compile", "threads"}
    assert compose_modality("image", SPEED_VARIANTS["bf16"]).trainer.precision == "bf16-mixed"


@pytest.mark.parametrize("channels,height,width,kernel", [(3, 7, 7, 13), (4, 14, 12, 5), (2, 9, 16, 3)])
def test_dwconv_alternatives_equal_the_convolution(channels, height, width, kernel):
    torch.manual_seed(0)
    x, weight = torch.randn(2, channels, height, width), torch.randn(channels, 1, kernel, kernel)
    reference = F.conv2d(x, weight, padding=kernel // 2, groups=channels)
    torch.testing.assert_close(im2col_gemm(x, weight), reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fft_conv(x, weight), reference, rtol=1e-4, atol=1e-4)


def test_dwconv_benchmark_lists_every_shape_and_the_fastest_exact(tmp_path):
    shapes = dw_shapes("unireplknet_test", 64)
    assert shapes and all(s["weight"].shape == (s["channels"], 1, s["kernel"], s["kernel"]) for s in shapes)
    args = benchmark.parse_args(["dwconv", "--models", "unireplknet_test", "--batch-size", "2", "--resolution", "64",
                                 "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)])
    df = run_dwconv(args)
    assert set(df.candidate) == {"onednn_nchw", "onednn_channels_last", "im2col_gemm", "fft"}
    assert len(df) == 4 * len(shapes) and df.exact.all() and (df.rel_error < 1e-4).all()
    text = (tmp_path / "dwconv.md").read_text()
    assert "fastest_exact" in text and "per_layer_best" in text



@pytest.mark.slow
def test_compiled_backbone_trains_to_the_same_values():
    plain, fast = _task(), _task()
    harness.apply_speed(fast, {"channels_last": True, "compile": True})
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for task in (plain, fast):
        task.train()
        F.cross_entropy(task(x), y).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)
