"""Forecasting task: a modality's forecaster (adapter -> backbone inside) trained with a masked MSE / MAE loss.

Built only from plain values, so ``ForecastingTask.load_from_checkpoint(path)`` works anywhere, without Hydra:

- ``model``: ``{"_target_": "package.module.Class", **arguments}``. The class is called as
  ``Class(adapter=<module>, backbone=<module>, **data_info, **arguments)``: the task builds the adapter (import
  path + arguments) and the backbone (``core.create_backbone(..., in_chans=adapter.out_chans, num_classes=0)``,
  a feature extractor) and hands them in; ``data_info`` holds the DataModule's data-dependent arguments (number
  of series, window lengths, ...). The model maps a batch's ``inputs`` to the forecast, shaped like ``target``.
- Missing targets (NaN) are masked out of the loss and the metrics, and counted (``*/masked_targets``).
- Metrics: MSE and MAE over every observed target value, logged as ``val/mse``, ``test/mae`` ...; with
  ``value_scale`` != 1 (data stored in scaled units, e.g. x10) also in physical units (``test/mse_phys`` =
  MSE / scale^2, ``test/mae_phys`` = MAE / scale). After ``reparameterize()`` every test metric is logged again
  with a final ``_deploy`` (``test/mse_deploy``, ``test/mse_linear_phys_deploy`` ...).
- Baselines: if the DataModule has a ``baselines`` mapping (name -> module with the model's interface), the test
  loop evaluates them on the same batches and masks: ``test/mse_<name>``, ``test/mae_<name>`` (and ``_phys``),
  plus ``test/mse_best_baseline`` and ``test/mse_gain_vs_best_baseline`` = 1 - MSE / best baseline MSE.
- Optimizers and per-step LR schedules from ``core.tasks.optim`` (the paper's "Adam, LR halved every epoch" is
  ``optimizer={"name": "adam", "weight_decay": 0}``, ``scheduler={"name": "step", "gamma": 0.5, "start_epoch": 1}``);
  the deploy structure: see ``core.tasks.base.Task``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from core.tasks.base import Task
from core.tasks.builders import instantiate, to_plain

LOSSES = ("mse", "mae")


class ForecastErrors(Metric):
    """Sums of squared and absolute errors over the observed (finite) targets, and the count of masked ones."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        for name in ("squared", "absolute", "observed", "masked"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, forecast: Tensor, target: Tensor) -> None:
        mask = torch.isfinite(target)
        error = (forecast.double() - target.double())[mask]
        self.squared += error.square().sum()
        self.absolute += error.abs().sum()
        self.observed += mask.sum()
        self.masked += (~mask).sum()

    def compute(self) -> dict[str, Tensor]:
        count = self.observed.clamp_min(1)
        return {"mse": self.squared / count, "mae": self.absolute / count, "masked_targets": self.masked}


def masked_loss(forecast: Tensor, target: Tensor, kind: str = "mse") -> tuple[Tensor, Tensor]:
    """Mean squared (or absolute) error over the finite targets; returns (loss, number of observed values)."""
    mask = torch.isfinite(target)
    error = torch.where(mask, forecast - torch.nan_to_num(target), torch.zeros_like(forecast))
    per_value = error.square() if kind == "mse" else error.abs()
    observed = mask.sum()
    return per_value.sum() / observed.clamp_min(1), observed


class ForecastingTask(Task):
    """A forecaster trained and evaluated with masked errors, next to the DataModule's baselines.

    Args:
        model: ``{"_target_": ..., **arguments}`` of the forecaster (see the module docstring).
        backbone: ``{"name": <core.list_backbones() name>, **create_backbone keyword arguments}``.
        adapter: ``{"_target_": ..., **arguments}``; its ``out_chans`` becomes the backbone's ``in_chans``.
        data_info: the DataModule's data-dependent model arguments (``datamodule.data_info``).
        value_scale: stored units per physical unit (``datamodule.value_scale``).
        loss: ``"mse"`` or ``"mae"``.
        optimizer: ``core.tasks.optim.build_optimizer`` arguments.
        scheduler: ``core.tasks.optim.lr_multiplier`` arguments; None: constant LR.
    """

    def __init__(
        self,
        model: dict,
        backbone: dict,
        adapter: dict,
        data_info: dict,
        value_scale: float = 1.0,
        loss: str = "mse",
        optimizer: dict | None = None,
        scheduler: dict | None = None,
    ):
        super().__init__(to_plain(optimizer), to_plain(scheduler))
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid choices: {', '.join(LOSSES)}")
        model, backbone, adapter, data_info = to_plain(model), to_plain(backbone), to_plain(adapter), to_plain(data_info)
        optimizer, scheduler = to_plain(optimizer), to_plain(scheduler)
        self.save_hyperparameters(
            {
                "model": model, "backbone": backbone, "adapter": adapter, "data_info": data_info,
                "value_scale": value_scale, "loss": loss, "optimizer": optimizer, "scheduler": scheduler,
            }
        )
        if not isinstance(model, dict) or "_target_" not in model:
            raise ValueError(f"model needs '_target_' (the forecaster's import path) and its arguments, got {model!r}")
        clash = sorted(set(model) & (set(data_info) | {"adapter", "backbone"}))
        if clash:
            raise ValueError(f"the model config may not set {clash}: they come from the data / the task")
        adapter_module, backbone_module = self.build_adapter_and_backbone(adapter, backbone, num_classes=0)
        self.model = instantiate(model, adapter=adapter_module, backbone=backbone_module, **data_info)
        self.value_scale = float(value_scale)
        self.loss_name = loss
        self.val_errors = ForecastErrors()
        self.test_errors = ForecastErrors()
        self._baselines: dict[str, nn.Module] = {}
        self._baseline_errors: dict[str, ForecastErrors] = {}

    # --- model ---------------------------------------------------------------------------------------------

    @property
    def adapter(self) -> nn.Module:
        return self.model.adapter

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    def forward(self, inputs: Tensor) -> Tensor:
        """A batch's inputs -> the forecast (shaped like the target)."""
        return self.model(inputs)

    # --- steps ---------------------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx: int):
        inputs, target = batch
        forecast = self(inputs)
        loss, observed = masked_loss(forecast, target, self.loss_name)
        masked = target.numel() - observed
        self.log("train/masked_targets", masked.float(), on_step=False, on_epoch=True, reduce_fx="sum")
        if observed == 0:  # every target of the batch is missing
            return None
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(target))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        inputs, target = batch
        forecast = self(inputs)
        loss, _ = masked_loss(forecast, target, self.loss_name)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(target))
        self.val_errors.update(forecast, target)

    def on_validation_epoch_end(self) -> None:
        self._log_errors("val", "", self.val_errors, prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._baselines, self._baseline_errors = {}, {}
        datamodule = getattr(self.trainer, "datamodule", None)
        for name, baseline in (getattr(datamodule, "baselines", None) or {}).items():
            self._baselines[name] = baseline.to(self.device).eval()
            self._baseline_errors[name] = ForecastErrors().to(self.device)

    def test_step(self, batch, batch_idx: int) -> None:
        inputs, target = batch
        self.test_errors.update(self(inputs), target)
        for name, baseline in self._baselines.items():
            self._baseline_errors[name].update(baseline(inputs), target)

    def on_test_epoch_end(self) -> None:
        model_mse = self._log_errors("test", "", self.test_errors)
        baseline_mse = {name: self._log_errors("test", f"_{name}", errors) for name, errors in self._baseline_errors.items()}
        if baseline_mse:
            best = min(baseline_mse.values())
            self._log("test/mse_best_baseline", best)
            self._log("test/mse_gain_vs_best_baseline", 1.0 - model_mse / best if best > 0 else math.nan)
        self._baselines, self._baseline_errors = {}, {}

    def _log(self, name: str, value: float, prog_bar: bool = False) -> None:
        """Log one epoch-level value; test metrics of the deploy structure get a final ``_deploy``."""
        if self.deployed and name.startswith("test/"):
            name = f"{name}_deploy"
        self.log(name, value, prog_bar=prog_bar)

    def _log_errors(self, stage: str, source: str, errors: ForecastErrors, prog_bar: bool = False) -> float:
        """Log mse / mae (and their physical-unit versions) of one source ("" = the model); returns the MSE."""
        values = errors.compute()
        errors.reset()
        mse, mae = float(values["mse"]), float(values["mae"])
        self._log(f"{stage}/mse{source}", mse, prog_bar=prog_bar)
        self._log(f"{stage}/mae{source}", mae)
        if self.value_scale != 1.0:
            self._log(f"{stage}/mse{source}_phys", mse / self.value_scale**2)
            self._log(f"{stage}/mae{source}_phys", mae / self.value_scale)
        if not source:
            self._log(f"{stage}/masked_targets", float(values["masked_targets"]))
        return mse

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(inputs)
