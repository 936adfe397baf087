"""Small and narrow maps (the public code's issue #14: NaN on 384 x 128 inputs, stage-4 maps of 12 x 4 under 13 x 13
kernels): training stays finite, re-parameterization stays exact, and an input too small to train on is refused with
the way out."""

import copy

import pytest
import torch

from core import create_backbone, reparameterize


def train_steps(model: torch.nn.Module, x: torch.Tensor, steps: int = 3) -> list[float]:
    """A few AdamW steps on fixed labels; every loss, gradient and weight must stay finite."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    y = torch.arange(x.shape[0]) % 10
    losses = []
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
        assert not bad, f"non-finite gradients in {bad[:5]}"
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return losses


def check_small_maps(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = create_backbone(name, in_chans=1, num_classes=10)
    x = torch.randn(2, 1, *size)
    losses = train_steps(model, x)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]  # it learns the two labels
    model.eval()
    with torch.no_grad():
        reference = model(x)
        deployed = reparameterize(copy.deepcopy(model))
        torch.testing.assert_close(deployed(x), reference, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(reference).all()
    # fine-tuning the deploy structure on the same maps is finite too
    train_steps(deployed, x, steps=2)


@pytest.mark.parametrize("size", [(128, 384), (384, 128), (40, 520)])
def test_small_maps_train_finite_tiny(size):
    """The tiny variant, every stage-4 shape the issue names (4 x 12, 12 x 4) and a 2 x 17 strip."""
    check_small_maps("unireplknet_a", size)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(128, 384), (384, 128)])
def test_small_maps_train_finite_s(size):
    """UniRepLKNet-S (the issue's model): 13 x 13 kernels over 4 x 12 / 12 x 4 stage-4 maps (~1.5 min each)."""
    check_small_maps("unireplknet_s", size)


def test_a_single_value_per_channel_is_refused_in_training_only():
    model = create_backbone("unireplknet_a", in_chans=1, num_classes=3)
    with pytest.raises(ValueError, match=r"batch of 1 input of 32 x 32 leaves a 1 x 1 stage-4 map.*batch of 2"):
        model.train()(torch.randn(1, 1, 32, 32))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)  # two values per channel: trains
    assert model(torch.randn(1, 1, 33, 32)).shape == (1, 3)  # a 2 x 1 map: trains
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 1, 8, 8))).all()  # eval takes any size
        deployed = reparameterize(copy.deepcopy(model))
        assert deployed.train()(torch.randn(1, 1, 8, 8)).shape == (1, 3)  # no BatchNorm left: no refusal
