"""Tests of core.tasks: losses, mixup, soft targets, metrics, optimizer groups, LR schedules, checkpoint reload."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.tasks import ClassificationTask, build_adapter, build_optimizer, lr_multiplier, param_groups, to_plain

ADAPTER = {"_target_": "modalities.image.adapter.ImageAdapter", "in_chans": 3}


def make_task(**kwargs) -> ClassificationTask:
    args = dict(num_classes=10, backbone={"name": "unireplknet_test"}, adapter=ADAPTER)
    args.update(kwargs)
    return ClassificationTask(**args)


@pytest.fixture(scope="module")
def task() -> ClassificationTask:
    torch.manual_seed(0)
    return make_task()


def test_forward_gives_logits_per_class(task):
    assert task(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def test_soft_one_hot_targets_give_the_int_target_loss(task):
    logits = torch.randn(6, 10)
    target = torch.tensor([0, 1, 2, 3, 4, 9])
    soft = F.one_hot(target, 10).float()
    assert torch.allclose(task.compute_loss(logits, target), task.compute_loss(logits, soft), atol=1e-6)
    smooth = soft * 0.9 + 0.01
    assert torch.allclose(task.compute_loss(logits, target, 0.1), task.compute_loss(logits, smooth), atol=1e-6)


def test_bce_loss_uses_smoothed_one_hot_targets():
    task = make_task(loss="bce")
    logits = torch.randn(4, 10)
    target = torch.tensor([1, 2, 3, 4])
    expected = F.binary_cross_entropy_with_logits(logits, F.one_hot(target, 10).float() * 0.8 + 0.02)
    assert torch.allclose(task.compute_loss(logits, target, 0.2), expected)


def test_unknown_loss_lists_choices():
    with pytest.raises(ValueError, match="ce, bce"):
        make_task(loss="focal")


def test_mixup_training_step_handles_odd_batches():
    torch.manual_seed(0)
    task = make_task(mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0}, label_smoothing=0.1)
    assert task.mixup is not None
    loss = task.training_step((torch.randn(5, 3, 32, 32), torch.arange(5)), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    # mixed targets are soft: the loss exceeds the smoothing-free minimum even for a perfect model
    assert make_task(mixup={"mixup_alpha": 0.0, "cutmix_alpha": 0.0}).mixup is None


def test_soft_targets_from_the_data_pipeline_train_and_score_by_argmax(task):
    inputs = torch.randn(4, 3, 32, 32)
    soft = torch.full((4, 10), 0.02)
    soft[torch.arange(4), torch.tensor([3, 1, 4, 1])] = 0.82
    assert torch.isfinite(task.training_step((inputs, soft), 0))
    task.val_acc.reset()
    with torch.no_grad():
        task._evaluate((inputs, soft), "val", task.val_acc, None)
    labels = soft.argmax(-1)
    with torch.no_grad():
        expected = (task(inputs).argmax(-1) == labels).float().mean()
    assert task.val_acc.compute() == pytest.approx(float(expected))


def test_all_unreadable_batch_is_skipped(task):
    assert task.training_step((torch.empty(0), torch.empty(0, dtype=torch.long)), 0) is None


def test_no_weight_decay_on_1d_parameters_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {2, 4}
    assert len(no_decay["params"]) == 4  # conv bias, BN weight and bias, linear bias
    assert all(p.ndim == 1 for p in no_decay["params"])
    optimizer = build_optimizer(model, "adam", lr=1e-3, weight_decay=0.1, betas=[0.95, 0.999])
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["betas"] == (0.95, 0.999)
    with pytest.raises(ValueError, match="adamw, adam, sgd"):
        build_optimizer(model, "lamb")


def test_step_schedule_decays_by_085_each_epoch_from_epoch_5():
    """The audio recipe: LR x0.85 each epoch from epoch 5 (0-based epochs, 10 steps per epoch)."""
    f = lr_multiplier("step", steps_per_epoch=10, total_steps=1000, gamma=0.85, step_epochs=1, start_epoch=5)
    assert [f(10 * e) for e in range(5)] == [1.0] * 5
    assert f(49) == 1.0
    assert f(50) == pytest.approx(0.85)
    assert f(59) == pytest.approx(0.85)
    assert f(60) == pytest.approx(0.85**2)
    assert f(10 * 20) == pytest.approx(0.85**16)


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    f = lr_multiplier("cosine", steps_per_epoch=10, total_steps=100, warmup_epochs=2, warmup_start=0.0,
                      min_lr_ratio=0.1)
    assert f(0) == 0.0
    assert f(10) == pytest.approx(0.5)
    assert f(20) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.1)
    values = [f(s) for s in range(20, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="cosine, step, constant, poly"):
        lr_multiplier("exponential", 10, 100)


def test_adapter_spec_errors_are_explicit():
    with pytest.raises(ImportError, match="no attribute 'Nope'"):
        build_adapter({"_target_": "modalities.image.adapter.Nope"})
    with pytest.raises(ValueError, match="_target_"):
        build_adapter({"in_chans": 3})
    with pytest.raises(TypeError, match="out_chans"):
        build_adapter({"_target_": "torch.nn.Identity"})


def test_hyper_parameters_are_plain_values():
    nested = to_plain({"a": (1, 2), "b": {"c": [3]}})
    assert nested == {"a": [1, 2], "b": {"c": [3]}}
    task = make_task(optimizer={"name": "adamw", "lr": 1e-3, "betas": (0.9, 0.99)})
    json.dumps(dict(task.hparams))  # nothing but JSON-able values: no modules, no OmegaConf objects


def test_load_from_checkpoint_and_deploy_weights_without_hydra(tmp_path):
    torch.manual_seed(0)
    task = make_task(scheduler={"name": "cosine", "warmup_epochs": 1})
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.arange(8) % 10)
    trainer.fit(task, torch.utils.data.DataLoader(data, batch_size=4))
    trainer.save_checkpoint(tmp_path / "task.ckpt")

    restored = ClassificationTask.load_from_checkpoint(tmp_path / "task.ckpt", map_location="cpu").eval()
    task.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(restored(x), task(x))
        # the deploy structure computes the same function in eval mode, with fewer parameters
        before = sum(p.numel() for p in restored.parameters())
        expected = restored(x)
        restored.reparameterize()
        assert restored.deployed and sum(p.numel() for p in restored.parameters()) < before
        assert torch.allclose(restored(x), expected, atol=1e-4)
    torch.save({"hyper_parameters": dict(restored.hparams), "state_dict": restored.state_dict()},
               tmp_path / "deploy.pt")
    deployed = ClassificationTask.load_deploy(tmp_path / "deploy.pt")
    with torch.no_grad():
        assert torch.allclose(deployed(x), expected, atol=1e-4)
