"""experiments/predict.py: a short image run's deploy.pt, its best.ckpt and the run directory evaluate to the
run's own deploy test metrics (also with the fast model); bad paths and configs fail with clear messages.

``--files``: tiny fast_dev_runs of every modality predict on files written here (images, 44.1 kHz stereo wav and
8 kHz flac, mp4 / avi, .off / .ply / .obj meshes and .txt clouds, a wide CSV for the forecaster) plus broken
ones: top-k tables / JSON, the broken files named on stderr, exit code 1; ``read_input`` of a test-split file
equals the test dataset's item (the forecaster's: the test window over the same rows)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from experiments.predict import load_run_config, main, predict, resolve_checkpoint
from experiments.run import train


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, mini_image_root):
    from tests.conftest import compose_config

    run_dir = tmp_path_factory.mktemp("predict") / "run"
    cfg = compose_config(
        ["modality=image", f"data.root={mini_image_root}", "debug=limit_batches", "backbone=unireplknet_test",
         "data.batch_size=8", "trainer.max_epochs=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=null"],
        run_dir,
    )
    record = train(cfg)
    return run_dir, record


def test_predict_reproduces_the_runs_deploy_metrics(short_run, tmp_path):
    run_dir, record = short_run
    deploy = predict(run_dir / "checkpoints" / "deploy.pt", out=tmp_path / "deploy.json")
    best = predict(run_dir / "checkpoints" / "best.ckpt", out=tmp_path / "best.json")
    fast = main([str(run_dir), "--fast", "--out", str(tmp_path / "fast.json")])  # run dir -> deploy.pt
    for result in (deploy, best, fast):
        assert math.isclose(result["test/acc_deploy"], record["test/acc_deploy"], abs_tol=1e-6)
        assert math.isclose(result["test/loss_deploy"], record["test/loss_deploy"], rel_tol=1e-4)
    assert fast["model"] == "fast" and fast["checkpoint"].endswith("deploy.pt")
    assert json.loads((tmp_path / "best.json").read_text())["checkpoint"].endswith("best.ckpt")
    assert predict(run_dir, split="val")["split"] == "val"
    assert (run_dir / "predict_val.json").is_file()


def test_predict_errors(short_run, tmp_path):
    run_dir, _ = short_run
    with pytest.raises(FileNotFoundError, match="no checkpoint file or run directory"):
        resolve_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="has no checkpoints/deploy.pt"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no run config"):
        load_run_config(tmp_path)
    with pytest.raises(ValueError, match="must look like key=value"):
        load_run_config(run_dir, overrides=["data.batch_size"])
    with pytest.raises(ValueError, match="split must be"):
        predict(run_dir, split="train")


# --- --files: predictions on the user's own files ----------------------------------------------------------------


def _tiny_run(tmp_path_factory, name: str, overrides: list[str]):
    """A fast_dev_run of the tiny backbone (config.yaml + checkpoints/deploy.pt) in its own run dir."""
    from tests.conftest import FAST, compose_config

    run_dir = tmp_path_factory.mktemp(f"predict_{name}") / "run"
    train(compose_config([f"modality={name}", *FAST, "data.build_mini=false", *overrides], run_dir))
    return run_dir


def _predict_files(capsys, run_dir, *args) -> tuple[dict, str, str]:
    record = main([str(run_dir), *map(str, args)])
    out, err = capsys.readouterr()
    return record, out, err


def _check_predictions(record: dict, good: list, bad: list, names: list[str], k: int) -> None:
    assert [item["file"] for item in record["predictions"]] == [str(path) for path in good]
    for item in record["predictions"]:
        probs = [entry["probability"] for entry in item["top_k"]]
        assert len(probs) == k and probs == sorted(probs, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-5
        assert {entry["class"] for entry in item["top_k"]} <= set(names)
    assert [error["file"] for error in record["errors"]] == [str(path) for path in bad]
    assert record["exit_code"] == (1 if bad else 0)


def _check_error_lines(err: str, bad: list) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == len(bad)
    for line, path in zip(lines, bad):
        assert str(path) in line


def test_files_image_table_json_and_errors(short_run, tmp_path, capsys):
    from PIL import Image

    from modalities.image.datamodule import ImageDataModule

    run_dir, _ = short_run
    rng = np.random.default_rng(0)
    good = [tmp_path / "photo.jpg", tmp_path / "drawing.png"]
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(good[0])
    Image.fromarray(rng.integers(0, 255, (50, 50, 4), dtype=np.uint8), "RGBA").save(good[1])
    bad = [tmp_path / "broken.png", tmp_path / "missing.jpg"]
    bad[0].write_bytes(b"not an image")
    files = [good[0], bad[0], good[1], bad[1]]

    record, out, err = _predict_files(capsys, run_dir, "--files", *files, "--top-k", "3")
    cfg = load_run_config(run_dir)
    dm = ImageDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    _check_predictions(record, good, bad, dm.class_names, 3)
    assert str(good[0]) in out and str(good[1]) in out and str(bad[0]) not in out
    assert out.count("  1. ") == 2 and out.count("  3. ") == 2 and "  4. " not in out
    _check_error_lines(err, bad)
    assert "broken.png: cannot use it" in err and "expected an image file" in err

    as_json, out, _ = _predict_files(capsys, run_dir, "--files", *good, "--json")  # default k = 5
    assert json.loads(out)["predictions"] == as_json["predictions"] and as_json["exit_code"] == 0
    assert all(len(item["top_k"]) == 5 for item in as_json["predictions"])
    # the same probabilities for the same file (the deploy model; no randomness)
    assert as_json["predictions"][0]["top_k"][:3] == record["predictions"][0]["top_k"]

    sample, _ = dm.dataset("test")[0]  # read_input is the test split's reading and transform
    torch.testing.assert_close(dm.read_input(dm.dataset("test").samples[0][0]), sample)


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    from modalities.audio import build_mini

    root = build_mini(tmp_path_factory.mktemp("audio") / "mini", seed=0, words=("yes", "no", "up"), num_speakers=8,
                      clips_per_speaker=2, num_val_variants=2, num_test_variants=2)
    return _tiny_run(tmp_path_factory, "audio", [f"data.root={root}", "data.batch_size=4", "data.num_workers=0",
                                                 "data.persistent_workers=false"])


def test_files_audio(audio_run, tmp_path, capsys):
    import soundfile as sf

    from modalities.audio.datamodule import AudioDataModule

    t = np.arange(int(44100 * 1.5)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 660 * t)], axis=1).astype(np.float32)
    good = [tmp_path / "speech.wav", tmp_path / "short.flac"]
    sf.write(good[0], stereo, 44100)  # 44.1 kHz stereo, 1.5 s
    sf.write(good[1], stereo[:2000, 0], 8000)  # 8 kHz mono, 0.25 s
    bad = [tmp_path / "broken.wav", tmp_path / "empty.wav"]
    bad[0].write_bytes(b"RIFF....WAVEfmt garbage")
    bad[1].write_bytes(b"")

    record, out, err = _predict_files(capsys, audio_run, "--files", good[0], bad[0], good[1], bad[1])
    _check_predictions(record, good, bad, ["no", "up", "yes"], 3)  # k = min(5, 3 classes)
    _check_error_lines(err, bad)
    assert "empty.wav: cannot use it: empty file" in err and "expected an audio file" in err

    cfg = load_run_config(audio_run)
    dm = AudioDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    assert tuple(dm.read_input(good[0]).shape) == dm.feature_shape
    features, _ = dm.dataset("test")[0]
    torch.testing.assert_close(dm.read_input(dm.dataset("test").files[0]), features)


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    from modalities.video import build_mini

    root = build_mini(tmp_path_factory.mktemp("video") / "mini", splits={"train": 1, "val": 1, "test": 1})
    return _tiny_run(tmp_path_factory, "video", [f"data.root={root}", "data.batch_size=4", "data.num_workers=0"])


def _write_avi(path, frames) -> bool:
    import av

    try:
        with av.open(str(path), mode="w", format="avi") as container:
            stream = container.add_stream("mpeg4", rate=25)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    except Exception:  # an FFmpeg build without the mpeg4 encoder / avi muxer
        return False
    return True


def test_files_video(video_run, tmp_path, capsys):
    from modalities.video.datamodule import VideoDataModule
    from modalities.video.mini import write_mp4

    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (1, 48, 64, 3), dtype=np.uint8), 40, axis=0)
    good = [tmp_path / "clip.mp4"]
    write_mp4(good[0], frames)
    if _write_avi(tmp_path / "clip.avi", frames):
        good.append(tmp_path / "clip.avi")
    bad = [tmp_path / "broken.mp4"]
    bad[0].write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")

    record, _, err = _predict_files(capsys, video_run, "--files", *good, *bad, "--json")
    cfg = load_run_config(video_run)
    dm = VideoDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    _check_predictions(record, good, bad, dm.class_names, 5)
    _check_error_lines(err, bad)
    views = dm.read_input(good[0])  # the test split's clips x crops views
    assert tuple(views.shape) == (cfg.data.test_clips * cfg.data.test_crops, cfg.data.num_frames, 3,
                                  cfg.data.frame_size, cfg.data.frame_size)
    path, _ = dm.dataset("test").samples[0]
    torch.testing.assert_close(dm.read_input(path), dm.dataset("test")[0][0])


@pytest.fixture(scope="module")
def pointcloud_run(tmp_path_factory):
    from modalities.pointcloud import build_mini

    root = build_mini(tmp_path_factory.mktemp("pointcloud") / "mini", seed=0, splits={"train": 3, "test": 2})
    return _tiny_run(tmp_path_factory, "pointcloud", [
        f"data.root={root}", "data.batch_size=8", "data.num_points=128", "data.mesh_points=256",
        "data.val_fraction=0", "data.num_workers=0", "data.persistent_workers=false"])


def test_files_pointcloud(pointcloud_run, tmp_path, capsys):
    from modalities.pointcloud.datamodule import PointCloudDataModule
    from modalities.pointcloud.preprocess import import_open3d

    o3d = import_open3d()
    mesh = o3d.geometry.TriangleMesh.create_cylinder(radius=0.3, height=2.0)
    good = [tmp_path / "shape.off", tmp_path / "shape.ply", tmp_path / "shape.obj", tmp_path / "cloud.txt"]
    for path in good[:3]:
        assert o3d.io.write_triangle_mesh(str(path), mesh)
    rng = np.random.default_rng(0)
    np.savetxt(good[3], np.c_[rng.normal(size=(300, 3)), rng.normal(size=(300, 3))], delimiter=",", fmt="%.5f")
    bad = [tmp_path / "broken.off", tmp_path / "words.txt", tmp_path / "cloud.xyz"]
    bad[0].write_text("OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n")  # no faces
    bad[1].write_text("a,b,c\nd,e,f\n")
    bad[2].write_text("0 0 0\n")

    record, _, err = _predict_files(capsys, pointcloud_run, "--files", *good, *bad, "--top-k", "2")
    cfg = load_run_config(pointcloud_run)
    dm = PointCloudDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    _check_predictions(record, good, bad, dm.class_names, 2)
    _check_error_lines(err, bad)
    assert "the mesh has no faces" in err and "unknown point-cloud file type '.xyz'" in err
    assert tuple(dm.read_input(good[3]).shape) == (cfg.data.num_points, 3)
    path, _ = dm.dataset("test").samples[0]
    torch.testing.assert_close(dm.read_input(path), dm.dataset("test")[0][0])


@pytest.fixture(scope="module")
def timeseries_run(tmp_path_factory):
    from modalities.timeseries import build_mini

    root = build_mini(tmp_path_factory.mktemp("timeseries") / "mini", num_stations=66, days=40)
    return _tiny_run(tmp_path_factory, "timeseries", [f"data.root={root}", "data.batch_size=4"])


def test_files_timeseries_forecast_csv(timeseries_run, tmp_path, capsys):
    import pandas as pd

    from modalities.timeseries.datamodule import TimeSeriesDataModule

    cfg = load_run_config(timeseries_run)
    dm = TimeSeriesDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    values, timestamps = dm._load()["test"]
    stations, start = dm.station_ids(), 5
    rows = slice(start, start + cfg.data.seq_len + 6)  # seq_len + 6 rows; the window is the last seq_len
    table = pd.DataFrame(values[rows], columns=stations)[stations[::-1]]  # any column order
    table.insert(0, "timestamp", timestamps[rows].strftime("%Y-%m-%d %H:%M:%S"))
    table["notes"] = "ignored"
    table_path = tmp_path / "stations.csv"
    table.to_csv(table_path, index=False, float_format="%.9g")
    broken = tmp_path / "fewer_stations.csv"
    table.drop(columns=[stations[3]]).to_csv(broken, index=False)

    record, out, err = _predict_files(capsys, timeseries_run, "--files", table_path, broken)
    written = tmp_path / "stations_forecast.csv"
    assert out.strip().endswith(str(written)) and record["forecasts"][0]["forecast"] == str(written)
    assert record["exit_code"] == 1 and [e["file"] for e in record["errors"]] == [str(broken)]
    _check_error_lines(err, [broken])
    assert f"stations are missing, e.g. ['{stations[3]}']" in err
    forecast = pd.read_csv(written)
    assert list(forecast.columns) == ["timestamp", *stations]
    assert forecast.shape == (cfg.data.pred_len, 1 + len(stations)) and np.isfinite(forecast[stations]).all().all()
    expected = pd.date_range(timestamps[rows][-1], periods=cfg.data.pred_len + 1, freq="h")[1:]
    assert list(pd.to_datetime(forecast["timestamp"])) == list(expected)

    # the model input is the DataModule's own test window over the same rows
    window_start = rows.stop - cfg.data.seq_len
    torch.testing.assert_close(dm.read_input(table_path), dm.dataset("test")[window_start][0], equal_nan=True)

    out_path = tmp_path / "mine.csv"
    record, out, _ = _predict_files(capsys, timeseries_run, "--files", table_path, "--out", out_path, "--json")
    assert json.loads(out)["forecasts"][0]["forecast"] == str(out_path) and record["exit_code"] == 0
    assert pd.read_csv(out_path).shape == forecast.shape
    short = tmp_path / "short.csv"
    table.iloc[: cfg.data.seq_len - 1].to_csv(short, index=False)
    record, _, err = _predict_files(capsys, timeseries_run, "--files", short)
    assert record["exit_code"] == 1 and f"fewer than seq_len={cfg.data.seq_len}" in err and str(short) in err


def test_wide_table_read_window_uses_the_tables_station_names(tmp_path):
    import pandas as pd

    from modalities.base import UnreadableInputError
    from modalities.timeseries.datamodule import WideTableDataModule

    times = pd.date_range("2021-03-01", periods=200, freq="h")
    rng = np.random.default_rng(0)
    data = pd.DataFrame(rng.normal(size=(200, 3)).astype(np.float32), columns=["KSEA", "KPDX", "KBOI"])
    pd.concat([pd.DataFrame({"time": times.strftime("%Y-%m-%d %H:%M:%S")}), data], axis=1).to_csv(
        tmp_path / "series.csv", index=False)
    pd.DataFrame({"station": ["KSEA", "KPDX", "KBOI"], "lat": [47.4, 45.6, 43.6], "lon": [-122.3, -122.6, -116.2],
                  "alt": [130.0, 9.0, 874.0]}).to_csv(tmp_path / "stations.csv", index=False)
    dm = WideTableDataModule(tmp_path / "series.csv", tmp_path / "stations.csv", time_column="time", seq_len=24,
                             label_len=12, pred_len=6)
    recent = pd.DataFrame({"time": times[-30:].strftime("%Y-%m-%d %H:%M:%S")})
    for name in ("KBOI", "KSEA", "KPDX"):  # another column order
        recent[name] = data[name].to_numpy()[-30:]
    recent.drop(index=[20]).to_csv(tmp_path / "recent.csv", index=False, float_format="%.9g")  # an absent hour
    inputs, future = dm.read_window(tmp_path / "recent.csv")
    assert dm.station_ids() == ["KSEA", "KPDX", "KBOI"] and tuple(inputs.shape) == (24 + 6, 3 + 4)
    assert list(future) == list(pd.date_range(times[-1], periods=7, freq="h")[1:])
    expected = data.to_numpy()[-24:].copy()
    expected[20 - 6] = np.nan  # the absent hour is a NaN row of the last 24 of 30
    torch.testing.assert_close(inputs[:24, :3], torch.from_numpy(expected), equal_nan=True)
    assert torch.isnan(inputs[24:, :3]).all()
    with pytest.raises(UnreadableInputError, match="no 'time' column"):
        dm.read_window(tmp_path / "stations.csv")
    with pytest.raises(UnreadableInputError, match="missing file"):
        dm.read_window(tmp_path / "absent.csv")

