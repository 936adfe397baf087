"""Station forecasting data: the Global Temperature / Wind Speed files, or any wide table, as a LightningDataModule.

Two on-disk layouts, one batch format:

- ``TimeSeriesDataModule`` reads Corrformer's files (and ``build_mini``'s)::

      <root>/{temp,wind}_global_hourly_{train,val,test}.npy   (T, stations, 1) values (x10 in the real data)
      <root>/data_time_{train,val,test}.npy                   (T,) timestamps, e.g. "2019-01-01 00:00:00"
      <root>/stations_sorted.npy                              (stations, 3): lat, lon, altitude

- ``WideTableDataModule`` reads one table (CSV or Parquet, through pandas) with a timestamp column and one column
  per station, plus a station metadata table (station id, lat, lon, altitude); it is split chronologically
  (7 : 1 : 2 by default).

Batches are ``(inputs, target)``: ``inputs`` B x (seq_len + pred_len) x (D + 4), the packed window of
``preprocess`` (D station values over seq_len steps, NaN over the pred_len future, then the 4 calendar features of
every step); ``target`` B x pred_len x D, NaN where a value is missing. Window i of a split is
``x = t[i : i + seq_len]``, ``target = t[i + seq_len : i + seq_len + pred_len]`` (48 / 24 / 24 by default; label_len
steps of x are the decoder's known start).

Bad input: series are put on a complete hourly grid (absent timestamps become NaN rows); NaN values are masked
out of the loss and the metrics by the task, and counted here (``missing_values``, ``inserted_steps`` per split,
one warning). Files whose lengths or station counts disagree are refused with a message naming them.

Model-facing attributes (known before ``setup``): ``data_info`` (num_series, seq_len, label_len, pred_len,
num_time_features, series_coords: the forecaster's data-dependent arguments), ``value_scale`` (stored units per
physical unit), ``in_chans`` (C' = 1). After ``setup``: ``baselines`` (persistence, seasonal naive, and a linear
model fitted on the train split), evaluated by the forecasting task next to the model.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from modalities.base import ModalityDataModule, UnreadableInputError

from . import mini
from .preprocess import (
    NUM_TIME_FEATURES,
    build_baselines,
    num_windows,
    pack_window,
    parse_timestamps,
    regularize_hourly,
    time_features,
)

SPLITS = ("train", "val", "test")
VARIABLES = mini.VARIABLES


class MissingValuesWarning(UserWarning):
    """The series has missing values or absent timestamps; they are masked out and counted."""


class WindowDataset(Dataset):
    """Sliding windows over one split: item i -> (packed inputs, target), see the module docstring."""

    def __init__(self, values: np.ndarray, marks: np.ndarray, seq_len: int, pred_len: int, stride: int = 1):
        if stride < 1:
            raise ValueError(f"window stride must be >= 1, got {stride}")
        self.values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        self.marks = torch.from_numpy(np.ascontiguousarray(marks, dtype=np.float32))
        self.seq_len, self.pred_len, self.stride = seq_len, pred_len, stride
        self.length = num_windows(len(values), seq_len, pred_len, stride)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"window {index} out of range ({self.length} windows)")
        start = index * self.stride
        rows = slice(start, start + self.seq_len + self.pred_len)
        values = self.values[rows]
        return pack_window(values, self.marks[rows], self.seq_len), values[self.seq_len :].clone()


class StationSeriesDataModule(ModalityDataModule):
    """Windows, counts and baselines shared by both layouts (loaders: the shared base); subclasses read the splits.

    Args:
        root: the dataset folder (or table) the splits are read from.
        seq_len, label_len, pred_len: input length, decoder start length, forecast length (48 / 24 / 24).
        batch_size, num_workers, pin_memory, persistent_workers, build_mini, mini_seed: see
            ``modalities.base.ModalityDataModule``.
        train_stride, val_stride, test_stride: step between consecutive windows of each split (1 = every hour;
            the paper protocol tests on every window).
        value_scale: stored units per physical unit (10 for the real files: metrics are also reported / 100, / 10).
        seasonal_period: the seasonal-naive period in steps (24 = same hour one day earlier).
        linear_ridge: relative ridge of the linear baseline.
        freq: the series' step (pandas frequency string).
    """

    in_chans = 1
    mini = mini
    time_column = "timestamp"  # the timestamp column of a wide table (read_input); WideTableDataModule's argument
    # windows are never dropped: gaps become NaN rows that the task masks out
    bad_input_kinds = {"missing_values": False, "inserted_steps": False}
    drop_last_train = False

    def __init__(
        self,
        root: str | os.PathLike,
        seq_len: int = 48,
        label_len: int = 24,
        pred_len: int = 24,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        build_mini: bool = False,
        mini_seed: int = 0,
        train_stride: int = 1,
        val_stride: int = 1,
        test_stride: int = 1,
        value_scale: float = 1.0,
        seasonal_period: int = 24,
        linear_ridge: float = 1e-3,
        freq: str = "h",
    ):
        super().__init__(root, None, batch_size, None, num_workers, pin_memory, persistent_workers, build_mini,
                         mini_seed)
        if seq_len < 1 or pred_len < 1 or not 0 <= label_len <= seq_len:
            raise ValueError(f"need seq_len >= 1, pred_len >= 1, 0 <= label_len <= seq_len; got {seq_len}/{label_len}/{pred_len}")
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        self.strides = {"train": train_stride, "val": val_stride, "test": test_stride}
        self.value_scale = float(value_scale)
        self.seasonal_period, self.linear_ridge, self.freq = seasonal_period, linear_ridge, freq
        self.missing_values: dict[str, int] = {}
        self.inserted_steps: dict[str, int] = {}
        self.baselines: dict[str, torch.nn.Module] = {}
        self._splits: dict[str, tuple[np.ndarray, pd.DatetimeIndex]] | None = None
        self._coords: np.ndarray | None = None

    # --- what subclasses provide --------------------------------------------------------------------------

    def read_coords(self) -> np.ndarray:
        """D x 3 station (lat, lon, altitude), without reading the series."""
        raise NotImplementedError

    def read_splits(self) -> dict[str, tuple[np.ndarray, pd.DatetimeIndex]]:
        """split -> (T x D float values, T timestamps), as stored."""
        raise NotImplementedError

    def read_class_names(self) -> None:
        return None  # a forecasting task has no classes

    def station_ids(self) -> list[str]:
        """The stations' names in series order (the column names ``read_input`` looks for); files without names
        (Corrformer's) get ``station_0``, ``station_1`` ... in their stored order."""
        return [f"station_{i}" for i in range(self.num_series)]

    # --- a user's table -> the model input of the next forecast ---------------------------------------------

    def read_input(self, path: str | os.PathLike) -> Tensor:
        """A wide table (see ``read_window``) -> the packed model input forecasting the steps after its last row."""
        return self.read_window(path)[0]

    def read_window(self, path: str | os.PathLike) -> tuple[Tensor, pd.DatetimeIndex]:
        """A wide table (CSV or Parquet: the ``time_column`` and one column per station of ``station_ids()``, in the
        data's stored units; other columns are ignored) -> (the packed (seq_len + pred_len) x (D + 4) input of the
        window whose x is the table's last ``seq_len`` steps, the ``pred_len`` timestamps after its last row).

        The table is read like the data: sorted by time, put on the hourly grid (absent steps are NaN, which the
        model fills), values that are not numbers are NaN; the window is made by ``WindowDataset``.
        """
        path = Path(path)
        ids = self.station_ids()
        expected = (f"a CSV or Parquet table with a {self.time_column!r} column and one column per station of the "
                    f"run ({len(ids)}: {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}) and at least "
                    f"seq_len={self.seq_len} {self.freq!r} steps")
        try:
            frame = self._read(path)
        except (OSError, ValueError, ImportError) as error:  # missing, not a table, no Parquet engine
            raise UnreadableInputError(path, expected, f"{type(error).__name__}: {error}") from error
        frame.columns = [str(c) for c in frame.columns]
        if self.time_column not in frame.columns:
            columns = list(frame.columns)[:8]
            raise UnreadableInputError(path, expected, f"no {self.time_column!r} column (columns: {columns})")
        missing = [s for s in ids if s not in frame.columns]
        if missing:
            reason = f"{len(missing)} of the run's {len(ids)} stations are missing, e.g. {missing[:5]}"
            raise UnreadableInputError(path, expected, reason)
        try:
            timestamps = parse_timestamps(frame[self.time_column], f"{path.name}:{self.time_column}")
            values = frame[ids].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
            order = np.argsort(timestamps.to_numpy(), kind="stable")
            values, timestamps, _ = regularize_hourly(values[order], timestamps[order], self.freq, path.name)
        except ValueError as error:
            raise UnreadableInputError(path, expected, str(error)) from error
        if len(values) < self.seq_len:
            raise UnreadableInputError(path, expected, f"{len(values)} time steps, fewer than seq_len={self.seq_len}")
        future = pd.date_range(timestamps[-1], periods=self.pred_len + 1, freq=self.freq)[1:]
        window = np.concatenate([values[-self.seq_len :], np.full((self.pred_len, len(ids)), np.nan, np.float32)])
        marks = time_features(timestamps[-self.seq_len :].append(future))
        inputs, _ = WindowDataset(window, marks, self.seq_len, self.pred_len)[0]
        return inputs, future

    @staticmethod
    def _read(path: Path, header_only: bool = False) -> pd.DataFrame:
        """A CSV (``.csv``, ``.csv.gz`` ...) or Parquet (``.parquet``, ``.pq``) table."""
        if not path.is_file():
            raise FileNotFoundError(f"missing file {path}")
        if path.name.lower().endswith((".parquet", ".pq")):
            try:
                return pd.read_parquet(path)
            except ImportError as error:
                raise ImportError(f"reading {path.name} needs a Parquet engine such as pyarrow: {error}") from error
        return pd.read_csv(path, nrows=0 if header_only else None)

    # --- model-facing attributes --------------------------------------------------------------------------

    @property
    def coords(self) -> np.ndarray:
        if self._coords is None:
            coords = np.asarray(self.read_coords(), dtype=np.float64)
            if coords.ndim != 2 or coords.shape[1] != 3:
                raise ValueError(f"station metadata must be stations x 3 (lat, lon, altitude), got shape {coords.shape}")
            self._coords = coords
        return self._coords

    @property
    def num_series(self) -> int:
        return len(self.coords)

    @property
    def data_info(self) -> dict:
        """The forecaster's data-dependent constructor arguments (plain values)."""
        return {
            "num_series": self.num_series,
            "seq_len": self.seq_len,
            "label_len": self.label_len,
            "pred_len": self.pred_len,
            "num_time_features": NUM_TIME_FEATURES,
            "series_coords": self.coords.round(6).tolist(),
        }

    # --- setup --------------------------------------------------------------------------------------------

    def _load(self) -> dict[str, tuple[np.ndarray, pd.DatetimeIndex]]:
        if self._splits is not None:
            return self._splits
        splits = {}
        for split, (values, timestamps) in self.read_splits().items():
            if values.shape[1] != self.num_series:
                raise ValueError(
                    f"{split} split has {values.shape[1]} stations but the station metadata lists {self.num_series}"
                )
            values, timestamps, inserted = regularize_hourly(values.astype(np.float32), timestamps, self.freq, split)
            self.inserted_steps[split] = inserted
            self.missing_values[split] = int(np.isnan(values).sum())
            self.bad_inputs.add("inserted_steps", inserted)
            self.bad_inputs.add("missing_values", self.missing_values[split])
            if num_windows(len(values), self.seq_len, self.pred_len) == 0:
                raise ValueError(
                    f"{split} split has {len(values)} steps, fewer than one window "
                    f"(seq_len + pred_len = {self.seq_len + self.pred_len})"
                )
            splits[split] = (values, timestamps)
        report = [
            f"{split}: {self.missing_values[split]} missing values "
            f"({self.missing_values[split] / max(1, splits[split][0].size):.2%}), "
            f"{self.inserted_steps[split]} absent time steps"
            for split in splits
            if self.missing_values[split] or self.inserted_steps[split]
        ]
        if report:
            warnings.warn(
                "series with gaps (absent steps are inserted as NaN rows; NaN is masked out of the loss and the "
                "metrics): " + "; ".join(report),
                MissingValuesWarning,
                stacklevel=2,
            )
        self._splits = splits
        return splits

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if not self.baselines:
            train = self._load()["train"][0]
            self.baselines = build_baselines(train, self.seq_len, self.pred_len, self.seasonal_period, self.linear_ridge)

    def train_series(self) -> np.ndarray:
        """The train split's T x D values on the complete grid (NaN = missing), in stored units."""
        return self._load()["train"][0]

    def build_dataset(self, split: str) -> WindowDataset:
        values, timestamps = self._load()[split]
        return WindowDataset(values, time_features(timestamps), self.seq_len, self.pred_len, self.strides[split])


def _load_npy(path: Path, allow_pickle: bool) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        return np.load(path, allow_pickle=allow_pickle)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise ValueError(
                f"{path.name} stores Python objects (pickled); loading it runs code from the file. If you trust "
                "it, set allow_pickle=True (data.allow_pickle=true), or re-save it as strings / datetime64."
            ) from error
        raise


class TimeSeriesDataModule(StationSeriesDataModule):
    """Corrformer's Global Temperature / Wind Speed files (``variable`` ``temp`` or ``wind``) under ``root``.

    ``root=None`` means the repository's mini dataset (``data/mini/timeseries``), built by ``prepare_data`` when
    missing (``build_mini=None`` = only for that root; True = build it at any root lacking it; False = never).
    ``allow_pickle``: needed only if the timestamp files store Python objects. Other arguments: see
    ``StationSeriesDataModule`` (``value_scale`` defaults to the files' x10).
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        variable: str = "temp",
        build_mini: bool | None = None,
        allow_pickle: bool = False,
        value_scale: float = mini.VALUE_SCALE,
        **kwargs,
    ):
        root = Path(root).expanduser().resolve() if root is not None else mini.MINI_ROOT
        if build_mini is None:
            build_mini = root == mini.MINI_ROOT.resolve()
        super().__init__(root, value_scale=value_scale, build_mini=bool(build_mini), **kwargs)
        if variable not in VARIABLES:
            raise ValueError(f"unknown variable {variable!r}; valid choices: {', '.join(VARIABLES)}")
        self.variable = variable
        self.allow_pickle = allow_pickle

    def prepare_data(self) -> None:
        """Build the mini set when asked to, unless ``root`` already holds a complete station set of another
        origin (e.g. a run trained with the mini config, evaluated with ``--override data.root=<real files>``:
        its saved config says ``build_mini: true``); those files are read as they are."""
        if self.build_mini and not mini.is_complete(self.root) and not mini._built_here(self.root) and all(
            (self.root / name).is_file() for name in self.expected_files()
        ):
            self.check_root()
            return
        super().prepare_data()

    def check_root(self) -> None:
        missing = [name for name in self.expected_files() if not (self.root / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.root} lacks {', '.join(missing)}. Expected Corrformer's layout: "
                f"{{temp,wind}}_global_hourly_{{train,val,test}}.npy (T, stations, 1), data_time_{{split}}.npy (T,), "
                "stations_sorted.npy (stations, 3). For the generated mini dataset pass build_mini=True "
                "(or leave root unset)."
            )

    def expected_files(self) -> list[str]:
        return [mini.STATIONS_FILE] + [
            name for split in SPLITS for name in (mini.values_file(self.variable, split), mini.time_file(split))
        ]

    def read_coords(self) -> np.ndarray:
        if self.build_mini and not (self.root / mini.STATIONS_FILE).is_file():
            self.prepare_data()
        return _load_npy(self.root / mini.STATIONS_FILE, self.allow_pickle)

    def read_splits(self) -> dict[str, tuple[np.ndarray, pd.DatetimeIndex]]:
        self.prepare_data()
        splits = {}
        for split in SPLITS:
            values_name, time_name = mini.values_file(self.variable, split), mini.time_file(split)
            values = _load_npy(self.root / values_name, self.allow_pickle)
            if values.ndim == 3 and values.shape[2] == 1:
                values = values[:, :, 0]
            if values.ndim != 2:
                raise ValueError(f"{values_name} must be shaped (T, stations, 1) or (T, stations), got {values.shape}")
            timestamps = _load_npy(self.root / time_name, self.allow_pickle)
            if len(timestamps) != len(values):
                raise ValueError(
                    f"{values_name} has {len(values)} time steps but {time_name} has {len(timestamps)} timestamps; "
                    "the files of a split must have the same length"
                )
            splits[split] = (values, parse_timestamps(timestamps, time_name))
        counts = {split: values.shape[1] for split, (values, _) in splits.items()}
        if len(set(counts.values())) > 1 or counts["train"] != self.num_series:
            raise ValueError(
                f"station counts disagree: {mini.STATIONS_FILE} lists {self.num_series} stations, the "
                f"{self.variable} files have {counts}"
            )
        return splits


class WideTableDataModule(StationSeriesDataModule):
    """One wide table (timestamp column + one column per station; CSV or Parquet) and a station table.

    Args:
        table: path of the series table (``.csv`` / ``.csv.gz`` or ``.parquet``), read with pandas.
        stations: path of the station table: one row per station with ``station_column`` (matching the series
            table's column names) and the three ``coord_columns`` (lat, lon, altitude).
        time_column: the series table's timestamp column.
        split_fractions: chronological train / val / test fractions.
        value_scale: stored units per physical unit (1 by default).
        Other arguments: see ``StationSeriesDataModule``.
    """

    def __init__(
        self,
        table: str | os.PathLike,
        stations: str | os.PathLike,
        time_column: str = "timestamp",
        station_column: str = "station",
        coord_columns: Sequence[str] = ("lat", "lon", "alt"),
        split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
        **kwargs,
    ):
        super().__init__(table, **kwargs)
        self.table, self.stations = Path(table), Path(stations)
        self.time_column, self.station_column = time_column, station_column
        self.coord_columns = list(coord_columns)
        if len(self.coord_columns) != 3:
            raise ValueError(f"coord_columns must name lat, lon and altitude columns, got {coord_columns}")
        fractions = np.asarray(split_fractions, dtype=float)
        if len(fractions) != 3 or (fractions <= 0).any() or not np.isclose(fractions.sum(), 1.0):
            raise ValueError(f"split_fractions must be three positive fractions summing to 1, got {split_fractions}")
        self.split_fractions = fractions
        self._station_ids: list[str] | None = None

    def station_ids(self) -> list[str]:
        """The station columns of the series table, in table order."""
        if self._station_ids is None:
            header = self._read(self.table, header_only=True)
            columns = [str(c) for c in header.columns]
            if self.time_column not in columns:
                raise ValueError(f"{self.table.name} has no timestamp column {self.time_column!r} (columns: {columns[:8]} ...)")
            self._station_ids = [c for c in columns if c != self.time_column]
            if not self._station_ids:
                raise ValueError(f"{self.table.name} has no station columns besides {self.time_column!r}")
        return self._station_ids

    def read_coords(self) -> np.ndarray:
        meta = self._read(self.stations)
        needed = [self.station_column, *self.coord_columns]
        absent = [c for c in needed if c not in meta.columns]
        if absent:
            raise ValueError(f"{self.stations.name} lacks the columns {absent} (has {list(meta.columns)})")
        meta = meta.assign(**{self.station_column: meta[self.station_column].astype(str)})
        if meta[self.station_column].duplicated().any():
            raise ValueError(f"{self.stations.name} lists some stations twice")
        meta = meta.set_index(self.station_column)
        ids = self.station_ids()
        unknown = [s for s in ids if s not in meta.index]
        if unknown:
            raise ValueError(f"{len(unknown)} stations of {self.table.name} are not in {self.stations.name}: {unknown[:5]}")
        return meta.loc[ids, self.coord_columns].to_numpy(dtype=np.float64)

    def read_splits(self) -> dict[str, tuple[np.ndarray, pd.DatetimeIndex]]:
        frame = self._read(self.table)
        frame.columns = [str(c) for c in frame.columns]
        timestamps = parse_timestamps(frame[self.time_column], f"{self.table.name}:{self.time_column}")
        values = frame[self.station_ids()].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
        order = np.argsort(timestamps.to_numpy(), kind="stable")
        values, timestamps = values[order], timestamps[order]
        bounds = np.round(np.cumsum(self.split_fractions) * len(values)).astype(int)
        starts = [0, bounds[0], bounds[1]]
        return {
            split: (values[start:stop], timestamps[start:stop])
            for split, start, stop in zip(SPLITS, starts, [bounds[0], bounds[1], len(values)])
        }
