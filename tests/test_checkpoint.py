"""Checkpoint loading: published layouts (plain and wrapped), in_chans adaptation, train -> deploy loading,
clear errors for mismatches, and refusal of files that are truncated or would execute code on load."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

import core
from core.checkpoint import CheckpointError
from tests.test_backbone import randomize


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    model = randomize(core.create_backbone("unireplknet_test", num_classes=10)).eval()
    path = tmp_path / "train.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_plain_and_wrapped_checkpoints_load_strict(trained, tmp_path):
    model, path = trained
    x = torch.randn(2, 3, 64, 64)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, wrapped)
    for p in (path, wrapped):
        fresh = core.load_checkpoint(core.create_backbone("unireplknet_test", num_classes=10), p).eval()
        with torch.no_grad():
            assert torch.equal(fresh(x), model(x))


def test_train_checkpoint_into_deploy_model(trained):
    model, path = trained
    x = torch.randn(2, 3, 64, 64)
    deploy = core.load_checkpoint(core.create_backbone("unireplknet_test", num_classes=10, deploy=True), path)
    with torch.no_grad():
        expected = model(x)
        assert (deploy.eval()(x) - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_in_chans_adaptation_and_headless_model(trained):
    model, path = trained
    one = core.load_checkpoint(core.create_backbone("unireplknet_test", in_chans=1, num_classes=10), path)
    stem = model.state_dict()["downsample_layers.0.0.weight"]
    assert torch.allclose(one.state_dict()["downsample_layers.0.0.weight"], stem.sum(dim=1, keepdim=True))
    headless = core.load_checkpoint(core.create_backbone("unireplknet_test", num_classes=0), path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(headless(x), model.forward_head(model.forward_features(x), pre_logits=True))


def test_mismatch_lists_keys_and_skip_head(trained):
    _, path = trained
    with pytest.raises(CheckpointError, match=r"shape mismatches: head.bias \(checkpoint \(10,\) vs model \(4,\)\)"):
        core.load_checkpoint(core.create_backbone("unireplknet_test", num_classes=4), path)
    model = core.create_backbone("unireplknet_test", num_classes=4)
    head = model.head.weight.clone()
    core.load_checkpoint(model, path, skip_head=True)
    assert torch.equal(model.head.weight, head)
    with pytest.raises(CheckpointError, match=r"missing keys: stages\.1\.0\.dwconv\.weight.*\n  unexpected keys: stages\.1\.0\.dwconv\.dil_bn"):
        core.load_checkpoint(core.create_backbone("unireplknet_test", num_classes=10, kernel_size=3), path)


def test_truncated_and_non_checkpoint_files(trained, tmp_path):
    _, path = trained
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    model = core.create_backbone("unireplknet_test", num_classes=10)
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a PyTorch checkpoint"):
        core.load_checkpoint(model, truncated)
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match="refused to load .*not a PyTorch checkpoint"):
        core.load_checkpoint(model, text)
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        core.load_checkpoint(model, tmp_path / "absent.pth")
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(CheckpointError, match="is not a state dict"):
        core.load_checkpoint(model, listing)


class _Payload:
    """Unpickling this object would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_checkpoint_is_refused_without_running_code(trained, tmp_path, protocol):
    model, _ = trained
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    state = dict(model.state_dict())
    state["payload"] = _Payload(marker)
    torch.save(state, evil, pickle_protocol=protocol)
    torch.save(state, tmp_path / 'evil_legacy.pth', pickle_protocol=protocol, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="refused to load .*could execute code"):
        core.load_checkpoint(core.create_backbone("unireplknet_test", num_classes=10), evil)
    with pytest.raises(CheckpointError, match="refused to load .*could execute code"):
        core.load_checkpoint(core.create_backbone("unireplknet_test", num_classes=10), tmp_path / "evil_legacy.pth")
    assert not marker.exists()
    # the same object unpickled without protection does run the payload: the test can fail
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_timm_pretrained_file_uses_the_safe_loader(trained):
    import timm

    model, path = trained
    loaded = timm.create_model(
        "unireplknet_test", pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # timm's convention: a head of another size is replaced, the rest loads; in_chans is adapted
    other = timm.create_model(
        "unireplknet_test", pretrained=True, in_chans=1, num_classes=3, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert other.head.out_features == 3
    assert torch.equal(other.stages[3][0].se.up.weight, model.stages[3][0].se.up.weight)
