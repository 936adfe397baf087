"""experiments/export.py: TorchScript and ONNX exports of the deploy model give the eager outputs (the ONNX graph
passes onnx.checker and runs in onnxruntime), also at another batch size; the speed report; a run's task exports
from its checkpoint (slow); bad arguments fail clearly."""

from __future__ import annotations

import pytest
import torch

from experiments.export import (
    deploy_backbone, export_and_verify, main, max_relative_error, parse_shape, run_onnx, run_torchscript,
)
from tests.test_backbone import randomize


def test_backbone_exports_equal_eager(tmp_path):
    torch.manual_seed(0)
    model = deploy_backbone("unireplknet_test", in_chans=1, num_classes=5)
    randomize(model)  # non-trivial deploy weights (biases, GRN gamma)
    example = torch.randn(1, 1, 32, 32)
    report = export_and_verify(model, example, tmp_path, "tiny", rtol=1e-5, speed_repeats=2)
    assert report["torchscript"]["max_rel_error"] <= 1e-5 and report["onnx"]["max_rel_error"] <= 1e-5
    assert report["onnx"]["checker"] == "passed"
    speed = report["onnx"]["speed"]
    assert speed["eager_s"] > 0 and speed["onnxruntime_s"] > 0 and speed["repeats"] == 2
    assert speed["onnxruntime_speedup"] == speed["eager_s"] / speed["onnxruntime_s"]
    batch = torch.randn(2, 1, 32, 32)  # the batch axis is dynamic in both exports
    with torch.no_grad():
        expected = model(batch)
    assert max_relative_error(run_torchscript(tmp_path / "tiny.pt", batch), expected) <= 1e-5
    assert max_relative_error(run_onnx(tmp_path / "tiny.onnx", batch), expected) <= 1e-5


def test_export_errors(tmp_path):
    model = deploy_backbone("unireplknet_test", num_classes=0)
    with pytest.raises(ValueError, match="unknown export format"):
        export_and_verify(model, torch.randn(1, 3, 32, 32), tmp_path, formats=("tflite",))
    with pytest.raises(ValueError, match="B,C,H,W"):
        parse_shape("3,224,224")
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_shape("1,3,a,224")
    with pytest.raises(SystemExit):
        main([])  # neither a checkpoint nor --backbone


@pytest.mark.slow
def test_run_task_exports_from_its_checkpoint(tmp_path, mini_image_root):
    from experiments.run import train
    from tests.conftest import FAST, compose_config

    run_dir = tmp_path / "run"
    train(compose_config(["modality=image", f"data.root={mini_image_root}", *FAST], run_dir))
    report = main([str(run_dir), "--out", str(tmp_path / "export")])
    assert (tmp_path / "export" / "deploy.pt").is_file() and (tmp_path / "export" / "deploy.onnx").is_file()
    assert report["torchscript"]["max_rel_error"] <= 1e-4 and report["onnx"]["max_rel_error"] <= 1e-4
