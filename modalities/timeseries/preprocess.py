"""Time-series preprocessing: calendar features, hourly regularization, windowing, per-window normalization, baselines.

Everything the forecasting pipeline does to the station series besides the learned model:

- ``time_features``: the four calendar features of every step (hour of day, day of week, day of month, day of
  year), each scaled to [-0.5, 0.5] (the Informer / Autoformer / Corrformer convention).
- ``regularize_hourly``: put a series on a complete hourly grid; absent timestamps become NaN rows (counted).
- windows: ``x = t[i : i + seq_len]``, ``target = t[i + seq_len : i + seq_len + pred_len]``; a window's model input
  is *packed* into one tensor (``pack_window`` / ``unpack_inputs``), see below.
- ``WindowNorm``: per-window normalization of each station (mean / std over time, NaN-aware, eps 1e-5) with a
  learnable per-station affine, inverted on the forecast.
- baselines fitted or defined on the data side: ``Persistence`` (last value), ``SeasonalNaive`` (the same hour one
  period earlier) and ``LinearBaseline`` (per-station least squares on the input window, fitted on the train split).

Packed inputs. A batch item is ``(inputs, target)`` with ``inputs`` one float tensor of shape
``(seq_len + pred_len) x (D + F)``: the first D columns are the station values (rows ``seq_len:`` are the unknown
future and hold NaN), the last F columns the calendar features of every row (the future's calendar is known).
One tensor keeps batches movable and comparable like every other modality's; ``unpack_inputs`` takes it apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

TIME_FEATURES = ("hour_of_day", "day_of_week", "day_of_month", "day_of_year")
NUM_TIME_FEATURES = len(TIME_FEATURES)
NORM_EPS = 1e-5


# --- timestamps and calendar features --------------------------------------------------------------------


def parse_timestamps(values, name: str = "timestamps") -> pd.DatetimeIndex:
    """Strings ("2019-01-01 00:00:00"), datetime64 or pandas timestamps -> a DatetimeIndex (timezone dropped)."""
    try:
        index = pd.DatetimeIndex(pd.to_datetime(np.asarray(values).ravel()))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name}: cannot parse the timestamps as dates ({error})") from error
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    if index.hasnans:
        raise ValueError(f"{name}: {int(index.isna().sum())} timestamps are missing (NaT)")
    return index


def time_features(timestamps: pd.DatetimeIndex) -> np.ndarray:
    """T timestamps -> T x 4 float32: hour of day, day of week, day of month, day of year, each in [-0.5, 0.5]."""
    index = pd.DatetimeIndex(timestamps)
    features = np.stack(
        [
            index.hour / 23.0 - 0.5,
            index.dayofweek / 6.0 - 0.5,
            (index.day - 1) / 30.0 - 0.5,
            (index.dayofyear - 1) / 365.0 - 0.5,
        ],
        axis=1,
    )
    return features.astype(np.float32)


def regularize_hourly(
    values: np.ndarray, timestamps: pd.DatetimeIndex, freq: str = "h", name: str = "series"
) -> tuple[np.ndarray, pd.DatetimeIndex, int]:
    """Put a T x D series on a complete grid of step ``freq`` from its first to its last timestamp.

    Timestamps absent from the data (gaps) become rows of NaN, which the loss and the metrics mask out.
    Returns the new values, the complete index and the number of inserted rows. Unsorted, duplicated or
    off-grid timestamps are refused.
    """
    index = pd.DatetimeIndex(timestamps)
    if len(index) != len(values):
        raise ValueError(f"{name}: {len(values)} rows of values but {len(index)} timestamps")
    if index.has_duplicates:
        duplicated = index[index.duplicated()].unique()[:3]
        raise ValueError(f"{name}: duplicated timestamps, e.g. {[str(t) for t in duplicated]}")
    if not index.is_monotonic_increasing:
        raise ValueError(f"{name}: timestamps are not in increasing order")
    if len(index) == 0:
        return values, index, 0
    grid = pd.date_range(index[0], index[-1], freq=freq)
    off_grid = index.difference(grid)
    if len(off_grid):
        raise ValueError(
            f"{name}: {len(off_grid)} timestamps are not on the {freq!r} grid starting at {index[0]}, "
            f"e.g. {off_grid[0]}"
        )
    if len(grid) == len(index):
        return values, index, 0
    frame = pd.DataFrame(values.reshape(len(index), -1), index=index).reindex(grid)
    filled = frame.to_numpy(dtype=values.dtype).reshape(len(grid), *values.shape[1:])
    return filled, grid, len(grid) - len(index)


# --- coordinates -----------------------------------------------------------------------------------------


def standardize_coords(coords) -> np.ndarray:
    """D x 3 station (lat, lon, altitude) -> zero mean, unit std per column (a constant column becomes 0)."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"station coordinates must be D x 3 (lat, lon, altitude), got shape {coords.shape}")
    if not np.isfinite(coords).all():
        raise ValueError("station coordinates contain NaN or infinite values")
    std = coords.std(axis=0)
    return ((coords - coords.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


# --- windows ---------------------------------------------------------------------------------------------


def num_windows(num_steps: int, seq_len: int, pred_len: int, stride: int = 1) -> int:
    """How many (input, target) windows a series of ``num_steps`` holds with the given stride."""
    span = num_steps - seq_len - pred_len
    return 0 if span < 0 else span // stride + 1


def window_bounds(index: int, seq_len: int, pred_len: int, stride: int = 1) -> tuple[slice, slice]:
    """Row slices of window ``index``: ``x = t[s : s + seq_len]`` and ``target = t[s + seq_len : s + seq_len + pred_len]``."""
    start = index * stride
    return slice(start, start + seq_len), slice(start + seq_len, start + seq_len + pred_len)


def pack_window(values: Tensor, marks: Tensor, seq_len: int) -> Tensor:
    """One window's (seq_len + pred_len) x D values and x F calendar features -> the packed model input.

    The future rows' values are replaced by NaN: a model that used them would produce NaN, not a silent leak.
    """
    values = values.clone()
    values[seq_len:] = float("nan")
    return torch.cat([values, marks], dim=-1)


def unpack_inputs(inputs: Tensor, seq_len: int, num_series: int) -> tuple[Tensor, Tensor]:
    """Packed B x (seq_len + pred_len) x (D + F) -> (x: B x seq_len x D, marks: B x (seq_len + pred_len) x F)."""
    if inputs.dim() != 3 or inputs.shape[1] <= seq_len or inputs.shape[2] <= num_series:
        raise ValueError(
            f"expected packed inputs of shape B x (seq_len + pred_len) x (D + F) with seq_len={seq_len}, "
            f"D={num_series}; got {tuple(inputs.shape)}"
        )
    return inputs[:, :seq_len, :num_series], inputs[:, :, num_series:]


# --- missing values --------------------------------------------------------------------------------------


def fill_missing(x: Tensor, dim: int = 1) -> Tensor:
    """Fill NaN along ``dim``: forward fill, then back fill the leading gap; an all-NaN series becomes 0."""
    x = x.movedim(dim, -1)
    finite = torch.isfinite(x)
    steps = torch.arange(x.shape[-1], device=x.device).expand_as(x)
    last_seen = torch.where(finite, steps, torch.zeros_like(steps)).cummax(dim=-1).values
    filled = torch.gather(x, -1, last_seen)
    first = torch.where(finite, steps, torch.full_like(steps, x.shape[-1] - 1)).min(dim=-1, keepdim=True).values
    leading = steps < first
    filled = torch.where(leading, torch.gather(x, -1, first.expand_as(x)), filled)
    filled = torch.nan_to_num(filled, nan=0.0, posinf=0.0, neginf=0.0)
    return filled.movedim(-1, dim)


# --- per-window normalization ----------------------------------------------------------------------------


class WindowNorm(nn.Module):
    """Per-window, per-station normalization with a learnable affine, and its inverse for the forecast.

    ``normalize``: ``(x - mean_t(x)) / sqrt(var_t(x) + eps) * weight + bias`` over the window's observed steps
    (NaN-aware; missing steps become 0 afterwards, i.e. the window mean); returns the statistics for ``denormalize``:
    ``(y - bias) / weight * std + mean``.
    """

    def __init__(self, num_series: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_series))
        self.bias = nn.Parameter(torch.zeros(num_series))

    def affine(self, num_series: int, known: bool = True) -> tuple[Tensor, Tensor]:
        """(weight, bias) for ``num_series`` stations: the learned ones for the stations it was built for; for
        another station set (``known`` False, or another count) the mean over the learned stations, for every one."""
        if known and num_series == len(self.weight):
            return self.weight, self.bias
        return self.weight.mean().expand(num_series), self.bias.mean().expand(num_series)

    def normalize(self, x: Tensor, known: bool = True) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """B x T x D (NaN = missing) -> (normalized B x T x D without NaN, (mean, std) each B x 1 x D)."""
        weight, bias = self.affine(x.shape[-1], known)
        observed = torch.isfinite(x)
        count = observed.sum(dim=1, keepdim=True).clamp_min(1)
        zeroed = torch.where(observed, x, torch.zeros_like(x))
        mean = zeroed.sum(dim=1, keepdim=True) / count
        centred = torch.where(observed, x - mean, torch.zeros_like(x))
        std = torch.sqrt(centred.square().sum(dim=1, keepdim=True) / count + self.eps)
        y = centred / std * weight + bias
        y = torch.where(observed, y, bias.expand_as(y))  # missing steps sit at the (normalized) window mean
        return y, (mean.detach(), std.detach())

    def denormalize(self, y: Tensor, stats: tuple[Tensor, Tensor], known: bool = True) -> Tensor:
        mean, std = stats
        weight, bias = self.affine(y.shape[-1], known)
        return (y - bias) / (weight + self.eps * self.eps) * std + mean


# --- baselines -------------------------------------------------------------------------------------------


class _Baseline(nn.Module):
    """A forecaster with the model's interface: packed inputs -> B x pred_len x D."""

    def __init__(self, seq_len: int, pred_len: int, num_series: int):
        super().__init__()
        self.seq_len, self.pred_len, self.num_series = seq_len, pred_len, num_series

    def history(self, inputs: Tensor) -> Tensor:
        """The input window with missing values filled (forward fill), B x seq_len x D."""
        x, _ = unpack_inputs(inputs, self.seq_len, self.num_series)
        return fill_missing(x, dim=1)


class Persistence(_Baseline):
    """Every future step equals the last observed value."""

    def forward(self, inputs: Tensor) -> Tensor:
        return self.history(inputs)[:, -1:].expand(-1, self.pred_len, -1)


class SeasonalNaive(_Baseline):
    """Step ``seq_len + j`` equals step ``seq_len + j - period`` (the same hour one day earlier for period 24)."""

    def __init__(self, seq_len: int, pred_len: int, num_series: int, period: int = 24):
        super().__init__(seq_len, pred_len, num_series)
        if not 0 < period <= seq_len:
            raise ValueError(f"seasonal period {period} must be in [1, seq_len={seq_len}]")
        self.period = period

    def forward(self, inputs: Tensor) -> Tensor:
        x = self.history(inputs)
        steps = torch.arange(self.pred_len, device=x.device)
        return x[:, self.seq_len - self.period + steps % self.period]


class LinearBaseline(_Baseline):
    """Per-station linear map of the last ``seq_len`` values (and a constant) to the next ``pred_len`` values.

    ``weight``: D x (seq_len + 1) x pred_len, fitted by ``fit`` with ridge-regularized least squares on every
    complete train window.
    """

    def __init__(self, seq_len: int, pred_len: int, num_series: int):
        super().__init__(seq_len, pred_len, num_series)
        self.register_buffer("weight", torch.zeros(num_series, seq_len + 1, pred_len, dtype=torch.float64))

    @torch.no_grad()
    def fit(self, series: np.ndarray, ridge: float = 1e-3, max_bytes: int = 2**28) -> "LinearBaseline":
        """Fit on a T x D train series (NaN = missing; windows with a missing value are left out per station).

        ``ridge`` is relative: ``ridge * mean(diag(X^T X))`` is added to the diagonal (the constant excluded).
        Windows are processed in chunks of about ``max_bytes`` of float64 design matrix.
        """
        series = torch.as_tensor(np.asarray(series, dtype=np.float64))
        if series.dim() != 2 or series.shape[1] != self.num_series:
            raise ValueError(f"expected a T x {self.num_series} series, got shape {tuple(series.shape)}")
        size = self.seq_len + 1
        gram = torch.zeros(self.num_series, size, size, dtype=torch.float64)
        cross = torch.zeros(self.num_series, size, self.pred_len, dtype=torch.float64)
        count = num_windows(len(series), self.seq_len, self.pred_len)
        if count == 0:
            raise ValueError(
                f"the train split ({len(series)} steps) is shorter than one window ({self.seq_len + self.pred_len})"
            )
        span = self.seq_len + self.pred_len
        chunk = max(1, max_bytes // (8 * self.num_series * span))
        for start in range(0, count, chunk):
            stop = min(count, start + chunk)
            block = series[start : stop + span - 1].T.unfold(1, span, 1)  # D x N x span
            inputs, targets = block[..., : self.seq_len], block[..., self.seq_len :]
            design = torch.cat([inputs, torch.ones_like(inputs[..., :1])], dim=-1)  # D x N x (seq_len + 1)
            keep = torch.isfinite(block).all(dim=-1, keepdim=True)
            design = torch.where(keep, design, torch.zeros_like(design))
            targets = torch.where(keep, targets, torch.zeros_like(targets))
            gram += design.transpose(1, 2) @ design
            cross += design.transpose(1, 2) @ targets
        scale = gram.diagonal(dim1=1, dim2=2)[:, :-1].mean(dim=1).clamp_min(1e-12)
        penalty = torch.eye(size, dtype=torch.float64).expand_as(gram).clone()
        penalty[:, -1, -1] = 1e-9
        gram += ridge * scale[:, None, None] * penalty
        self.weight.copy_(torch.linalg.solve(gram, cross))
        return self

    def forward(self, inputs: Tensor) -> Tensor:
        x = self.history(inputs).double()  # B x seq_len x D
        design = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # B x (seq_len + 1) x D
        forecast = torch.einsum("bld,dlp->bpd", design, self.weight)
        return forecast.to(inputs.dtype)


def build_baselines(
    train_series: np.ndarray, seq_len: int, pred_len: int, period: int = 24, ridge: float = 1e-3,
    names: Sequence[str] = ("persistence", "seasonal_naive", "linear"),
) -> dict[str, nn.Module]:
    """The baselines reported next to the model, by name (the linear one fitted on ``train_series``)."""
    num_series = train_series.shape[1]
    makers = {
        "persistence": lambda: Persistence(seq_len, pred_len, num_series),
        "seasonal_naive": lambda: SeasonalNaive(seq_len, pred_len, num_series, period),
        "linear": lambda: LinearBaseline(seq_len, pred_len, num_series).fit(train_series, ridge=ridge),
    }
    unknown = [name for name in names if name not in makers]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; valid choices: {', '.join(makers)}")
    return {name: makers[name]().eval() for name in names}
