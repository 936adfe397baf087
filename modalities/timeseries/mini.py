"""Deterministic builder of the mini Global Temperature / Wind Speed dataset, in the real files' layout.

``build_mini(root)`` writes, like Corrformer's data folder::

    <root>/temp_global_hourly_{train,val,test}.npy    float32 (T, stations, 1), degrees C x 10
    <root>/wind_global_hourly_{train,val,test}.npy    float32 (T, stations, 1), m/s x 10
    <root>/data_time_{train,val,test}.npy             str (T,), "2020-01-01 00:00:00", hourly
    <root>/stations_sorted.npy                        float64 (stations, 3): lat, lon, altitude (m)

Defaults: 66 stations (6 nodes x 11), hourly from 2020-01-01 for 274 days, split chronologically 7 : 1 : 2.
The generator is a small synthetic climate over a 60 x 30 degree region:

- climate: mean temperature falling with latitude and altitude (6.5 C/km); a seasonal cycle whose amplitude
  grows with latitude; a diurnal cycle peaking mid-afternoon in *local solar time* (longitude shifts it), larger
  at altitude and in summer;
- weather systems: warm and cold Gaussian anomalies (radius 5-10 degrees, 3-8 C) born west of the region every
  ~1.5 days that drift east at 6-12 degrees of longitude per day (so they cross a station in one to two days and
  reach the eastern stations days after the western ones); cold systems bring clouds that damp the diurnal
  cycle (a multiplicative, nonlinear effect); wind rises with the systems' pressure gradient;
- noise: a per-station AR(1) (hourly coefficient 0.95, std 0.8 C) plus 0.3 C measurement noise;
- defects real station data has: short station outages (NaN, a few per station) and one 5-hour hole in the
  train timestamps (rows absent from ``data_time_train.npy`` and the value files).

Stations are sorted by latitude, so a node (11 consecutive stations) is a west-east band of the region: the
weather systems cross a node's stations one after the other, and its western stations see them first.
The same arguments give the same bytes; the build takes about a second; an existing complete build with the same
parameters is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from modalities.mini_build import MANIFEST, build_atomically, manifest_matches

# The mini root the DataModule builds automatically: data/mini/timeseries in the repository (editable install).
MINI_ROOT = Path(__file__).resolve().parents[2] / "data" / "mini" / "timeseries"
SPLITS = ("train", "val", "test")
VARIABLES = ("temp", "wind")
VALUE_SCALE = 10.0  # stored values are physical units x 10, like the real files
STATIONS_FILE = "stations_sorted.npy"


def values_file(variable: str, split: str) -> str:
    return f"{variable}_global_hourly_{split}.npy"


def time_file(split: str) -> str:
    return f"data_time_{split}.npy"


def expected_files() -> list[str]:
    return [STATIONS_FILE] + [time_file(s) for s in SPLITS] + [values_file(v, s) for v in VARIABLES for s in SPLITS]


def _params(seed: int, num_stations: int, days: int, start: str) -> dict:
    return {"seed": seed, "num_stations": num_stations, "days": days, "start": start, "version": 2}


def _built_here(folder: Path) -> bool:
    """Whether ``folder`` holds a build of this module (its manifest, or the marker of builds before it had one),
    which a rebuild may replace."""
    return (folder / MANIFEST).is_file() or (folder / ".mini_complete.json").is_file()


def is_complete(root: str | os.PathLike, seed: int | None = None) -> bool:
    """True if ``root`` holds a finished mini build (built with ``seed``, if given)."""
    return manifest_matches(root) if seed is None else manifest_matches(root, seed=int(seed))


# --- the synthetic climate -----------------------------------------------------------------------------------


def make_stations(num_stations: int, rng: np.random.Generator) -> np.ndarray:
    """num_stations x 3 (lat, lon, altitude m), sorted by latitude (south to north)."""
    lon = rng.uniform(-10.0, 50.0, num_stations)
    lat = rng.uniform(30.0, 60.0, num_stations)
    ridge = 1800.0 * np.exp(-(((lon - 22.0) / 5.0) ** 2)) * np.exp(-(((lat - 45.0) / 9.0) ** 2))
    altitude = np.round(ridge + rng.exponential(250.0, num_stations), 1)
    stations = np.stack([np.round(lat, 4), np.round(lon, 4), altitude], axis=1)
    return stations[np.argsort(stations[:, 0], kind="stable")]


def weather_systems(hours: int, rng: np.random.Generator, per_day: float = 0.7) -> list[dict]:
    """Moving warm / cold anomalies: birth hour, start position, velocity (deg/h), radius, amplitude."""
    systems = []
    t = -240.0  # start before the series so the region is already populated at hour 0
    while t < hours:
        t += rng.exponential(24.0 / per_day)
        amplitude = rng.uniform(3.0, 8.0) * rng.choice([-1.0, 1.0])
        systems.append(
            {
                "birth": t,
                "lon0": -25.0,
                "lat0": rng.uniform(28.0, 62.0),
                "u": rng.uniform(6.0, 12.0) / 24.0,
                "v": rng.uniform(-2.0, 2.0) / 24.0,
                "radius": rng.uniform(5.0, 10.0),
                "amplitude": amplitude,
            }
        )
    return systems


def synthesize(stations: np.ndarray, timestamps: pd.DatetimeIndex, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Temperature (C) and wind speed (m/s), each T x D."""
    lat, lon, alt_km = stations[:, 0], stations[:, 1], stations[:, 2] / 1000.0
    hours = len(timestamps)
    t = np.arange(hours, dtype=np.float64)[:, None]  # T x 1
    doy = timestamps.dayofyear.to_numpy(dtype=np.float64)[:, None] + timestamps.hour.to_numpy()[:, None] / 24.0
    season = -np.cos(2 * np.pi * (doy - 20.0) / 365.25)  # -1 mid-January, +1 mid-July

    # weather systems: the anomaly field and its gradient magnitude (for the wind)
    anomaly = np.zeros((hours, len(lat)))
    gradient = np.zeros((hours, len(lat)))
    for system in weather_systems(hours, rng):
        age = t[:, 0] - system["birth"]
        centre_lon = system["lon0"] + system["u"] * age
        alive = (age >= 0) & (centre_lon < 85.0)
        if not alive.any():
            continue
        rows = np.flatnonzero(alive)
        ramp = np.clip(age[rows] / 12.0, 0.0, 1.0)  # a system builds up over half a day
        dlon = (lon[None, :] - centre_lon[rows, None]) * 0.7  # a degree of longitude is shorter at 45 N
        dlat = lat[None, :] - (system["lat0"] + system["v"] * age[rows, None])
        distance2 = (dlon**2 + dlat**2) / system["radius"] ** 2
        bump = system["amplitude"] * ramp[:, None] * np.exp(-0.5 * distance2)
        anomaly[rows] += bump
        gradient[rows] += np.abs(bump) * np.sqrt(distance2) / system["radius"]

    local_hour = (timestamps.hour.to_numpy()[:, None] + lon[None, :] / 15.0) % 24.0
    phase = 2 * np.pi * (local_hour - 15.0) / 24.0
    diurnal_shape = 0.85 * np.cos(phase) + 0.15 * np.cos(2 * phase)
    clouds = np.clip(-anomaly / 6.0, 0.0, 0.75)  # cold systems are cloudy: a damped diurnal cycle
    diurnal_amp = (3.0 + 1.5 * alt_km[None, :]) * (1.0 + 0.3 * season) * (1.0 - clouds)

    mean = 30.0 - 0.6 * (lat - 20.0) - 6.5 * alt_km
    seasonal_amp = 4.0 + 0.35 * (lat - 30.0)
    ar = _ar1(rng, hours, len(lat), phi=0.95, std=0.8)
    temperature = (
        mean[None, :] + seasonal_amp[None, :] * season + diurnal_amp * diurnal_shape + anomaly + ar
        + rng.normal(0.0, 0.3, (hours, len(lat)))
    )

    wind_base = 2.5 + 0.04 * (lat - 30.0) + 1.2 * alt_km
    wind_diurnal = 0.8 * np.clip(np.cos(phase), 0.0, None)  # afternoon mixing
    wind = wind_base[None, :] + 1.6 * gradient + wind_diurnal + 0.6 * np.abs(_ar1(rng, hours, len(lat), 0.9, 1.0))
    wind = np.clip(wind + rng.normal(0.0, 0.2, wind.shape), 0.0, None)
    return temperature, wind


def _ar1(rng: np.random.Generator, steps: int, series: int, phi: float, std: float) -> np.ndarray:
    """steps x series AR(1) noise with stationary standard deviation ``std``."""
    shocks = rng.normal(0.0, std * np.sqrt(1.0 - phi**2), (steps, series))
    out = np.empty_like(shocks)
    out[0] = rng.normal(0.0, std, series)
    for i in range(1, steps):
        out[i] = phi * out[i - 1] + shocks[i]
    return out


def add_outages(rng: np.random.Generator, *arrays: np.ndarray, per_station: float = 3.0) -> None:
    """Blank a few random 2-24 h stretches per station (the same in every array), in place."""
    steps, stations = arrays[0].shape
    for station in range(stations):
        for _ in range(rng.poisson(per_station)):
            start = int(rng.integers(0, steps - 24))
            length = int(rng.integers(2, 25))
            for array in arrays:
                array[start : start + length, station] = np.nan


# --- the build ---------------------------------------------------------------------------------------------


def build_mini(
    root: str | os.PathLike = MINI_ROOT,
    seed: int = 0,
    force: bool = False,
    *,
    num_stations: int = 66,
    days: int = 274,
    start: str = "2020-01-01",
) -> Path:
    """Build the mini dataset under ``root`` and return ``root``.

    Does nothing if a finished build with the same parameters is there (unless ``force``); refuses to overwrite
    station files it did not build (e.g. the real dataset). Files are written to a temporary sibling folder that
    is moved into place at the end, so an interrupted build leaves no half dataset behind.
    """
    root = Path(root)
    if num_stations < 2 or days < 10:
        raise ValueError(f"the mini dataset needs at least 2 stations and 10 days, got {num_stations} and {days}")
    params = _params(seed, num_stations, days, start)
    if not force and manifest_matches(root, **params):
        return root
    if root.exists() and not _built_here(root) and any((root / name).exists() for name in expected_files()):
        raise FileExistsError(f"{root} holds station files not built by build_mini; refusing to overwrite them")

    rng = np.random.default_rng(seed)
    stations = make_stations(num_stations, rng)
    timestamps = pd.date_range(start, periods=days * 24, freq="h")
    temperature, wind = synthesize(stations, timestamps, rng)
    add_outages(rng, temperature, wind)

    bounds = np.cumsum([0, int(0.7 * len(timestamps)), int(0.1 * len(timestamps))])
    pieces = {
        "train": slice(bounds[0], bounds[1]),
        "val": slice(bounds[1], bounds[2]),
        "test": slice(bounds[2], len(timestamps)),
    }
    hole = np.zeros(len(timestamps), dtype=bool)
    hole_start = bounds[1] // 2
    hole[hole_start : hole_start + 5] = True  # five hours the archive never received (train split)

    def write(staging: Path) -> dict:
        np.save(staging / STATIONS_FILE, stations)
        for split, rows in pieces.items():
            keep = ~hole[rows]
            stamps = timestamps[rows][keep].strftime("%Y-%m-%d %H:%M:%S").to_numpy(dtype=str)
            np.save(staging / time_file(split), stamps)
            for variable, values in (("temp", temperature), ("wind", wind)):
                stored = (values[rows][keep] * VALUE_SCALE).astype(np.float32)[:, :, None]  # (T, stations, 1)
                np.save(staging / values_file(variable, split), stored)
        return params

    return build_atomically(root, write, lambda path: manifest_matches(path, **params), force)
