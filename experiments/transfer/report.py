"""Train a modality's default mini recipe over several seeds and score every run on its mini test split AND on
independently made data: the figures of the README's "Does it transfer?" table.

::

    python -m experiments.transfer.report audio --seeds 0 1 2            # unseen voices
    python -m experiments.transfer.report video --seeds 0 1 2            # another renderer
    python -m experiments.transfer.report timeseries --seeds 0 1 2       # trained on real station observations
    python -m experiments.transfer.report segmentation --seeds 0 1 2     # another scene renderer
    python -m experiments.transfer.report detection --seeds 0 1 2        # the same renderer, COCO layout
    python -m experiments.transfer.report audio --seeds 0 -- trainer.max_epochs=2   # extra run.py overrides

Each seed is one ``experiments/run.py modality=<m> seed=<s>`` process (its wall time is measured). Audio, video,
segmentation and detection then score that run's deploy model on the check set (``experiments/predict.py <run>
--override data.root=<set>``); time series trains the same recipe a second time on the real observations (its
test metric, the gain over the best of persistence, seasonal naive and linear, needs the station's own baselines). The check set is built once under
``--check-root`` (default ``data/transfer/<m>``) by the modality's independent builder in this package. Prints a
markdown table (per seed, mean and worst) and writes ``<out>/transfer_<m>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Check:
    """How one modality's transfer is measured: the check set's builder and the metrics read from the runs."""

    build: Callable[[Path], object]
    metric: str  # key of results.json (mini test) and, with the _deploy suffix, of predict.py's output
    higher_is_better: bool
    train_on_check: bool = False  # True: train the recipe on the check set too, instead of predicting on it
    overrides: tuple[str, ...] = ("data.build_mini=false",)


def _audio_build(root: Path) -> None:
    from experiments.transfer.audio_voices import build

    build(root)


def _video_build(root: Path) -> None:
    from experiments.transfer.video_renderer import build

    build(root)


def _timeseries_build(root: Path) -> None:
    from experiments.transfer.timeseries_stations import write

    write(root)


def _segmentation_build(root: Path) -> None:
    from experiments.transfer.dense_renderer import build_segmentation

    build_segmentation(root)


def _detection_build(root: Path) -> None:
    from experiments.transfer.dense_renderer import build_detection

    build_detection(root)


CHECKS: dict[str, Check] = {
    "audio": Check(_audio_build, "test/acc", True),
    "video": Check(_video_build, "test/acc", True),
    "timeseries": Check(_timeseries_build, "test/mse_gain_vs_best_baseline", True, train_on_check=True),
    "segmentation": Check(_segmentation_build, "test/miou", True),
    "detection": Check(_detection_build, "test/map_50", True),
}


def run_seed(modality: str, seed: int, out: Path, extra: list[str], name: str = "") -> tuple[dict, float]:
    run_dir = out / modality / f"seed{seed}{name}"
    command = [sys.executable, str(REPO / "experiments" / "run.py"), f"modality={modality}", f"seed={seed}",
               f"hydra.run.dir={run_dir}", *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return json.loads((run_dir / "results.json").read_text()), seconds


def score_on_check(run_dir: Path, check_root: Path, check: Check) -> dict:
    out = run_dir / "transfer.json"
    command = [sys.executable, str(REPO / "experiments" / "predict.py"), str(run_dir), "--out", str(out),
               "--override", f"data.root={check_root}", *check.overrides]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def summarize(values: list[float], higher_is_better: bool) -> str:
    worst = min(values) if higher_is_better else max(values)
    return f"{statistics.fmean(values):.4f} ({'min' if higher_is_better else 'max'} {worst:.4f})"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage="%(prog)s MODALITY [options] "
                                     "[-- run.py overrides]")
    parser.add_argument("modality", choices=sorted(CHECKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--check-root", type=Path, default=None, help="check set folder (built if missing)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "transfer")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # what follows -- goes to run.py as overrides
    args = parser.parse_args(argv[:cut])
    args.extra = argv[cut + 1 :]
    check = CHECKS[args.modality]
    check_root = (args.check_root or REPO / "data" / "transfer" / args.modality).resolve()
    if not check_root.exists():
        check.build(check_root)
    rows = []
    for seed in args.seeds:
        results, seconds = run_seed(args.modality, seed, args.out.resolve(), args.extra)
        if check.train_on_check:
            on_check, _ = run_seed(args.modality, seed, args.out.resolve(),
                                   [*args.extra, f"data.root={check_root}", *check.overrides], name="_check")
            score = on_check[check.metric]
        else:
            transfer = score_on_check(args.out.resolve() / args.modality / f"seed{seed}", check_root, check)
            score = transfer[f"{check.metric}_deploy"]
        rows.append({"seed": seed, "mini": results[check.metric], "check": score, "minutes": seconds / 60.0})
        print(f"seed {seed}: mini {rows[-1]['mini']:.4f}, check {rows[-1]['check']:.4f}, "
              f"{rows[-1]['minutes']:.1f} min", flush=True)
    record = {"modality": args.modality, "metric": check.metric, "check_root": str(check_root), "rows": rows,
              "mini": summarize([r["mini"] for r in rows], check.higher_is_better),
              "check": summarize([r["check"] for r in rows], check.higher_is_better),
              "minutes_max": max(r["minutes"] for r in rows)}
    print(f"\n| modality | seeds | mini test {check.metric} | independent data | wall (max) |\n|---|---|---|---|---|\n"
          f"| {args.modality} | {', '.join(map(str, args.seeds))} | {record['mini']} | {record['check']} | "
          f"{record['minutes_max']:.1f} min |")
    (args.out / f"transfer_{args.modality}.json").write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
