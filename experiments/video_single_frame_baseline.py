"""Video mini recipe next to its single-frame baseline: does the frame tiling carry motion?

Runs ``experiments/run.py modality=video`` twice with the same recipe, data, seed and backbone, the second time
with ``data.num_frames=1`` (one frame per clip, the centre frame in evaluation), then prints both test
accuracies beside chance and writes them to ``<out>/summary.json``. The mini classes differ only by motion, so
the single-frame run should sit near chance (1 / 10) while the tiled run is well above it.

    python experiments/video_single_frame_baseline.py                      # both runs, runs/video_baseline/<time>/
    python experiments/video_single_frame_baseline.py --tiled-run runs/video/unireplknet_test/<time>
                                                                            # reuse a finished tiled run
    python experiments/video_single_frame_baseline.py trainer.max_epochs=5 # extra overrides go to both runs
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

RUN_SCRIPT = Path(__file__).resolve().parent / "run.py"
METRICS = ("test/acc", "test/acc_deploy", "train_wall_time_s", "num_classes", "run_dir")


def run(overrides: list[str], run_dir: Path) -> dict:
    """One ``run.py modality=video`` job in ``run_dir``; returns its results.json record."""
    command = [sys.executable, str(RUN_SCRIPT), "modality=video", *overrides, f"hydra.run.dir={run_dir}"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return read_results(run_dir)


def read_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run did not finish")
    return json.loads(path.read_text())


def summarize(tiled: dict, single: dict) -> dict:
    num_classes = tiled.get("num_classes") or single.get("num_classes")
    rows = {}
    for name, record in (("tiled", tiled), ("single_frame", single)):
        frames = _overridden(record, "data.num_frames")
        rows[name] = {"num_frames": frames, **{key: record.get(key) for key in METRICS}}
    return {"chance": 1.0 / num_classes if num_classes else None, "runs": rows}


def _overridden(record: dict, key: str) -> str:
    for override in record.get("overrides", []):
        if override.startswith(f"{key}="):
            return override.split("=", 1)[1]
    return "recipe default"


def table(summary: dict) -> str:
    lines = ["| run | N_F | test acc | test acc (deploy) | train wall time (s) |", "|---|---|---|---|---|"]
    for name, row in summary["runs"].items():
        acc, deploy, wall = row["test/acc"], row["test/acc_deploy"], row["train_wall_time_s"]
        lines.append(
            f"| {name} | {row['num_frames']} | {_fmt(acc)} | {_fmt(deploy)} | {_fmt(wall, '.0f')} |"
        )
    if summary["chance"] is not None:
        lines.append(f"| chance | - | {summary['chance']:.3f} | | |")
    return "\n".join(lines)


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="directory of both runs (default runs/video_baseline/<time>)")
    parser.add_argument("--tiled-run", type=Path, default=None, help="a finished modality=video run dir to reuse")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to both runs")
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / "video_baseline" / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    tiled = read_results(args.tiled_run) if args.tiled_run else run(args.overrides, out / "tiled")
    # one RGB frame: no previous frame to take a difference to
    single_frame = ["data.num_frames=1", "adapter.rows=1", "adapter.cols=1", "adapter.frame_difference=false",
                    "data.in_chans=3"]
    single = run([*args.overrides, *single_frame], out / "single_frame")
    summary = summarize(tiled, single)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(table(summary))
    print(f"written: {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
