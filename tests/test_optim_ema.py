"""Layer-wise learning-rate decay (core.tasks.optim) and the weight EMA callback (experiments.callbacks)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn

import core
from core.tasks.optim import build_optimizer, layer_ids, param_groups
from experiments.callbacks import WeightEMA
from experiments.run import train
from tests.conftest import FAST

LR, R = 1e-3, 0.8


def lrs_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    by_id = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def test_unireplknet_layer_lrs():
    model = core.create_backbone("unireplknet_test", in_chans=3, num_classes=5)  # depths 1, 1, 2, 1: L = 6
    lrs = lrs_by_name(model, build_optimizer(model, "adamw", lr=LR, weight_decay=0.05, layer_decay=R))
    top = 6
    for name, lr in lrs.items():
        if name.startswith("downsample_layers.0."):
            assert math.isclose(lr, LR * R ** top), name  # the stem
        elif name.startswith(("norm.", "head.")):
            assert lr == LR, name
    assert all(math.isclose(lrs[n], LR * R ** 5) for n in lrs if n.startswith("stages.0.0."))  # first block
    stage2_second = [n for n in lrs if n.startswith("stages.2.1.")]
    stage2_first = [n for n in lrs if n.startswith("stages.2.0.")]
    assert stage2_second and stage2_first
    assert all(math.isclose(lrs[n], LR * R ** (top - 4)) for n in stage2_second)  # its own layer, id 4
    assert all(math.isclose(lrs[n], LR * R ** (top - 3)) for n in stage2_first)
    # downsampling into stage 2 shares the id of stage 2's first block
    assert all(math.isclose(lrs[n], LR * R ** (top - 3)) for n in lrs if n.startswith("downsample_layers.2."))


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_baselines_get_monotone_lrs_by_depth(name):
    model = core.create_backbone(name, in_chans=3, num_classes=5)
    lrs = list(lrs_by_name(model, build_optimizer(model, "adamw", lr=LR, weight_decay=0.05, layer_decay=R)).values())
    _, top = layer_ids(model)
    assert top == {"resnet18": 9, "convnext_atto": 13}[name]  # blocks + 1
    assert all(a <= b for a, b in zip(lrs, lrs[1:]))  # parameters come stem -> stages -> head
    assert math.isclose(lrs[0], LR * R ** top) and lrs[-1] == LR
    assert len(set(lrs)) == top + 1  # every layer id has its own lr


def test_weight_decay_exclusions_kept_per_layer():
    model = core.create_backbone("unireplknet_test", in_chans=3, num_classes=5)
    groups = param_groups(model, 0.05, layer_decay=R, lr=LR)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for p in group["params"]:
            excluded = p.ndim <= 1 or names[id(p)].endswith(".bias")
            assert group["weight_decay"] == (0.0 if excluded else 0.05), names[id(p)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("layer_decay", [None, 1.0])
def test_no_layer_decay_is_todays_two_groups(layer_decay):
    model = core.create_backbone("unireplknet_test", in_chans=3, num_classes=5)
    optimizer = build_optimizer(model, "adamw", lr=LR, weight_decay=0.05, layer_decay=layer_decay)
    plain = param_groups(model, 0.05)
    assert len(optimizer.param_groups) == 2 == len(plain)
    for group, want in zip(optimizer.param_groups, plain):
        assert [id(p) for p in group["params"]] == [id(p) for p in want["params"]]
        assert group["weight_decay"] == want["weight_decay"] and group["lr"] == LR
        assert "lr_scale" not in group


def test_adapter_is_layer_zero_and_what_follows_the_backbone_is_top():
    class Wrapper(nn.Module):  # like a forecaster: adapter -> backbone -> decoder
        def __init__(self):
            super().__init__()
            self.adapter = nn.Conv2d(1, 3, 1)
            self.backbone = core.create_backbone("unireplknet_test", in_chans=3, num_classes=0)
            self.decoder = nn.Linear(self.backbone.num_features, 2)

    model = Wrapper()
    ids, top = layer_ids(model)
    assert ids["adapter.weight"] == 0 and ids["decoder.weight"] == top == 6
    assert ids["backbone.downsample_layers.0.0.weight"] == 0
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(model, 0.05, layer_decay=0.0, lr=LR)


# --- weight EMA -----------------------------------------------------------------------------------------


def test_ema_update_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = WeightEMA(decay=0.9)
    ema._init(model)
    before = {k: v.clone() for k, v in ema.weights.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.randn(8, 4)).square().mean().backward()  # also moves the BatchNorm running statistics
    optimizer.step()
    ema.update(model)
    state = model.state_dict()
    for name, _ in model.named_parameters():
        want = 0.9 * before[name] + (1 - 0.9) * state[name]
        torch.testing.assert_close(ema.weights[name], want, rtol=1e-6, atol=1e-7)
        assert not torch.equal(ema.weights[name], state[name])
    for name, buffer in model.named_buffers():
        assert torch.equal(ema.weights[name], buffer), name  # buffers copied


class _Toy(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_ema_follows_optimizer_steps_and_swaps_back(accumulate):
    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 4)), batch_size=4)
    toy, ema = _Toy(), WeightEMA(decay=0.5)
    trainer = L.Trainer(max_steps=3, accumulate_grad_batches=accumulate, callbacks=[ema], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    trainer.fit(toy, data)
    assert ema.updates == trainer.global_step == 3
    live = {k: v.clone() for k, v in toy.state_dict().items()}
    assert not torch.equal(ema.weights["net.weight"], live["net.weight"])
    with ema.swapped(toy):
        assert torch.equal(toy.net.weight, ema.weights["net.weight"])
    assert torch.equal(toy.net.weight, live["net.weight"])  # the live weights are back
    assert set(ema.state_dict()["weights"]) == set(live)


@pytest.mark.parametrize("modality", ["image", "timeseries"])
def test_training_with_ema_and_layer_decay_reports_ema_metrics(modality, make_config):
    record = train(make_config([
        f"modality={modality}", *FAST, "task.optimizer.layer_decay=0.7",
        "callbacks.ema={_target_:experiments.callbacks.WeightEMA,decay:0.5}",
    ]))
    tested = [k for k in record if k.startswith("test/") and not k.endswith(("_ema", "_deploy"))]
    assert tested
    for key in tested:  # every test metric also for the EMA weights, and the deploy test still agrees
        assert isinstance(record[f"{key}_ema"], float), key
        assert math.isclose(record[key], record[f"{key}_deploy"], rel_tol=1e-3, abs_tol=1e-4), key
    assert record["deploy_max_logit_diff"] < 1e-3
