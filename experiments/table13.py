"""Paper Table 13 (kernel size across modalities) from the results.json files of a sweep, beside the paper's numbers.

    python experiments/run.py sweep=table13_mini                               # the 16-job grid
    python experiments/table13.py runs/multirun/table13_mini/<timestamp>       # or any runs root

Writes ``table13.md``, ``table13.csv`` and ``table13.png`` (grouped bars: this sweep and the paper, one panel per
metric) into the given directory (``--out`` elsewhere) and prints the markdown table.

Rows are backbone families with their K (ResNet K=3, ConvNeXt K=7, UniRepLKNet K=11 / K=13; other K found in
the runs get rows of their own); a cell is the latest completed run of that row and modality per seed, "failed"
when its only runs failed. With several seeds (``sweep=table13_mini seeds=3``) a cell is the mean over seeds with
its standard deviation (error bars in the chart), the best row of a column is bold, a cell that differs from it
beyond the noise (Welch's t-test over the seeds, p < 0.05) is marked with a dagger, and table13.md lists every
pair of rows whose difference exceeds the noise. Accuracies are shown in %, forecasting errors in physical units (``test/mse_phys`` when the run
logged it). The paper's time-series column is labelled MAE, but its values are Table 9's temperature MSE
(UniRepLKNet-S: 7.602 / 1.832 MSE / MAE), so they sit beside the MSE column here.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.backbones.factory import declared_kernel_size
from experiments.results import load_results


@dataclass(frozen=True)
class Metric:
    """One column of Table 13: a modality's test metric (first key a run logged), scaled for display."""

    modality: str
    label: str
    keys: tuple[str, ...]
    scale: float = 1.0
    lower_is_better: bool = False


METRICS = (
    Metric("timeseries", "Time-series MSE", ("test/mse_phys", "test/mse"), lower_is_better=True),
    Metric("timeseries", "Time-series MAE", ("test/mae_phys", "test/mae"), lower_is_better=True),
    Metric("pointcloud", "Point cloud OA (%)", ("test/acc",), scale=100.0),
    Metric("audio", "Audio Acc (%)", ("test/acc",), scale=100.0),
    Metric("video", "Video Acc (%)", ("test/acc",), scale=100.0),
)

# (family, K) -> the paper's Table 13 row (UniRepLKNet-S, ResNet-101, ConvNeXt-S); MAE: not reported
PAPER = {
    ("ResNet", 3): {"Time-series MSE": 7.846, "Point cloud OA (%)": 92.6, "Audio Acc (%)": 73.6, "Video Acc (%)": 41.3},
    ("ConvNeXt", 7): {"Time-series MSE": 7.641, "Point cloud OA (%)": 92.7, "Audio Acc (%)": 94.3, "Video Acc (%)": 48.5},
    ("UniRepLKNet", 11): {"Time-series MSE": 7.751, "Point cloud OA (%)": 92.9, "Audio Acc (%)": 94.7,
                          "Video Acc (%)": 51.7},
    ("UniRepLKNet", 13): {"Time-series MSE": 7.602, "Point cloud OA (%)": 93.2, "Audio Acc (%)": 98.5,
                          "Video Acc (%)": 54.8},
}
FAMILIES = ("ResNet", "ConvNeXt", "UniRepLKNet")
FAILED = "failed"
NOISE_P = 0.05  # Welch's t-test level at which a difference between two rows counts as beyond the noise


def backbone_family(name: str) -> str:
    """``resnet18`` -> ResNet, ``convnext_atto`` -> ConvNeXt, ``unireplknet_test`` -> UniRepLKNet."""
    for family in FAMILIES:
        if str(name).lower().startswith(family.lower()):
            return family
    return str(name)


def largest_kernel(kernel_sizes) -> int | None:
    """The K of a run: a baseline's fixed K, or the largest per-block kernel size of a UniRepLKNet."""
    if kernel_sizes is None:
        return None
    if isinstance(kernel_sizes, (int, float, np.integer, np.floating)):  # a DataFrame column may hold 3.0 or NaN
        return None if np.isnan(kernel_sizes) else int(kernel_sizes)
    flat = [int(k) for stage in kernel_sizes for k in (stage if isinstance(stage, (list, tuple)) else [stage])]
    return max(flat) if flat else None


def row_label(family: str, kernel: int | None) -> str:
    return f"{family} (K={kernel})" if kernel is not None else family


def _run_kernel(run: pd.Series) -> int | None:
    found = largest_kernel(run.get("kernel_sizes"))
    if found is None:  # a failed run records the requested K only
        requested = run.get("kernel_size")
        found = int(requested) if requested is not None and not pd.isna(requested) else declared_kernel_size(run["backbone"])
    return found


def seed_values(group: pd.DataFrame, metric: Metric) -> tuple[list[float], str, str | None]:
    """The runs of one cell (columns status, finished, seed, the metric's keys) -> (one value per seed in
    display units, the latest completed run of each seed; status "completed" / "failed" / "missing"; the run_dir
    of the latest run)."""
    done = group[group["status"] == "completed"]
    key = next((k for k in metric.keys if k in done and done[k].notna().any()), None)
    if key is None:
        status = FAILED if (group["status"] == FAILED).any() else "missing"
        return [], status, group.sort_values("finished").iloc[-1].get("run_dir")
    latest = done[done[key].notna()].sort_values("finished").groupby("seed").tail(1).sort_values("seed")
    values = [float(v) * metric.scale for v in latest[key]]
    return values, "completed", latest.sort_values("finished").iloc[-1].get("run_dir")


def collect_cells(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (Table 13 row, metric) found in ``df`` (from ``load_results``).

    Columns: row, family, kernel, metric, modality, value (display units, the mean over seeds; NaN when failed),
    std (over seeds, NaN for one seed), seeds (how many), values (one per seed), status (completed / failed),
    backbone (the names behind the row), runs (how many results of that cell), run_dir (the latest run).
    """
    columns = ["row", "family", "kernel", "metric", "modality", "value", "std", "seeds", "values", "status",
               "backbone", "runs", "run_dir"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    df = df.copy()
    if "status" not in df:
        df["status"] = "completed"
    df["status"] = df["status"].fillna("completed")  # results written before the status key existed
    df["family"] = df["backbone"].map(backbone_family)
    df["kernel"] = [_run_kernel(run) for _, run in df.iterrows()]
    df["finished"] = df.get("finished", pd.Series("", index=df.index)).fillna("")
    df["seed"] = df.get("seed", pd.Series(0, index=df.index)).fillna(0)
    cells = []
    for metric in METRICS:
        runs = df[df["modality"] == metric.modality]
        for (family, kernel), group in runs.groupby(["family", "kernel"], dropna=False, sort=False):
            kernel = None if pd.isna(kernel) else int(kernel)
            values, status, run_dir = seed_values(group, metric)
            cells.append({
                "row": row_label(family, kernel), "family": family, "kernel": kernel, "metric": metric.label,
                "modality": metric.modality, "value": float(np.mean(values)) if values else float("nan"),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
                "seeds": len(values), "values": values, "status": status,
                "backbone": ", ".join(sorted(set(group["backbone"].astype(str)))), "runs": len(group),
                "run_dir": run_dir,
            })
    return pd.DataFrame(cells, columns=columns)


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test between two rows' per-seed values; NaN with fewer than 2 seeds each.

    Two noiseless rows (std 0) that differ are beyond the noise (p = 0); equal ones are not (p = 1).
    """
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    if np.std(a) == 0 and np.std(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def noise_comparisons(cells: pd.DataFrame) -> pd.DataFrame:
    """Every pair of rows within each metric with its difference of means and Welch's p-value.

    Columns: metric, row_a, row_b, diff (mean a - mean b, display units), p, beyond_noise (p < ``NOISE_P``).
    Only cells with at least two seeds on both sides are compared.
    """
    pairs = []
    done = cells[(cells["status"] == "completed") & (cells["seeds"] >= 2)]
    for metric, group in done.groupby("metric", sort=False):
        rows = list(group.itertuples())
        for i, a in enumerate(rows):
            for b in rows[i + 1:]:
                p = welch_p(a.values, b.values)
                pairs.append({"metric": metric, "row_a": a.row, "row_b": b.row, "diff": a.value - b.value,
                              "p": p, "beyond_noise": bool(p < NOISE_P)})
    return pd.DataFrame(pairs, columns=["metric", "row_a", "row_b", "diff", "p", "beyond_noise"])


def noise_notes(cells: pd.DataFrame, comparisons: pd.DataFrame, seeded_command: str) -> list[str]:
    """The lines under a table that say how many seeds each cell has and which differences exceed the noise."""
    seeds = sorted(set(cells.loc[cells["status"] == "completed", "seeds"]))
    if not seeds or max(seeds) < 2:
        return [f"One seed per cell: no noise estimate ({seeded_command} for mean ± std)."]
    notes = [
        f"Seeds per cell: {', '.join(map(str, seeds))}; mean ± std (sample standard deviation over seeds). Bold: the",
        f"best row of a column; †: beyond the noise of that best row (Welch's t-test, p < {NOISE_P}).",
        "",
        "Differences beyond the noise:" if comparisons["beyond_noise"].any() else
        "No difference between two rows exceeds the noise.",
    ]
    notes += [f"- {c.metric}: {c.row_a} - {c.row_b} = {c.diff:+.3g} (p = {c.p:.3f})"
              for c in comparisons[comparisons["beyond_noise"]].itertuples()]
    return notes + [""]


def _row_order(cells: pd.DataFrame) -> list[tuple[str, int | None]]:
    found = {(f, None if pd.isna(k) else int(k)) for f, k in zip(cells["family"], cells["kernel"])}
    rank = {family: i for i, family in enumerate(FAMILIES)}
    return sorted(found, key=lambda fk: (rank.get(fk[0], len(rank)), fk[0], fk[1] if fk[1] is not None else -1))


def build_table(cells: pd.DataFrame, paper: bool = True) -> pd.DataFrame:
    """Table 13's layout: one row per backbone row, per metric this sweep's value (and the paper's beside it).

    A cell holds a float (the mean over seeds), ``"failed"`` (its runs failed) or NaN (no run of that modality);
    with more than one seed in any cell, ``<metric> std`` columns hold the standard deviations.
    """
    rows = _row_order(cells)
    table = pd.DataFrame(index=pd.Index([row_label(f, k) for f, k in rows], name="backbone row"))
    names = cells.groupby("row")["backbone"].agg(lambda s: ", ".join(sorted(set(", ".join(s).split(", ")))))
    table["backbones"] = names.reindex(table.index)
    seeded = bool((cells["seeds"] > 1).any())
    for metric in METRICS:
        column, spread = [], []
        for family, kernel in rows:
            cell = cells[(cells["metric"] == metric.label) & (cells["row"] == row_label(family, kernel))]
            if cell.empty:
                column.append(float("nan"))
                spread.append(float("nan"))
            else:
                column.append(cell["value"].iloc[0] if cell["status"].iloc[0] == "completed" else cell["status"].iloc[0])
                spread.append(cell["std"].iloc[0])
        table[metric.label] = pd.Series(column, index=table.index, dtype=object)
        if seeded:
            table[f"{metric.label} std"] = spread
        if paper:
            values = [PAPER.get((f, k), {}).get(metric.label, float("nan")) for f, k in rows]
            table[f"{metric.label} paper"] = values
    return table


def to_markdown(table: pd.DataFrame, comparisons: pd.DataFrame | None = None,
                metrics: tuple[Metric, ...] = METRICS) -> str:
    """The table with values rounded (1 decimal for % and millions, 3 for errors), "-" for cells with no run.

    Seeded tables show "mean ± std"; with ``comparisons`` (``noise_comparisons``) the best row of each metric is
    bold and a cell beyond the noise of that best row carries a dagger.
    """
    def fmt(column: str, value) -> str:
        if isinstance(value, str):
            return value
        if value is None or pd.isna(value):
            return "-"
        return f"{value:.1f}" if "%" in column or "(M)" in column else f"{value:.3f}"

    shown = table.copy().astype(object)
    for column in [c for c in shown.columns if c != "backbones" and not c.endswith(" std")]:
        shown[column] = [fmt(column, v) for v in table[column]]
        if f"{column} std" not in table:
            continue
        shown[column] = [text if pd.isna(sd) else f"{text} ± {fmt(column, sd)}"
                         for text, sd in zip(shown[column], table[f"{column} std"])]
        metric = next((m for m in metrics if m.label == column), None)
        numbers = pd.to_numeric(table[column], errors="coerce")
        if metric is None or comparisons is None or comparisons.empty or numbers.isna().all():
            continue
        best = numbers.idxmin() if metric.lower_is_better else numbers.idxmax()
        beyond = comparisons[(comparisons["metric"] == column) & comparisons["beyond_noise"]
                             & ((comparisons["row_a"] == best) | (comparisons["row_b"] == best))]
        marked = set(beyond["row_a"]) | set(beyond["row_b"])
        shown.loc[best, column] = f"**{shown.loc[best, column]}**"
        for row in marked - {best}:
            shown.loc[row, column] = f"{shown.loc[row, column]} †"
    return shown.drop(columns=[c for c in shown.columns if c.endswith(" std")]).to_markdown()


def plot_table(table: pd.DataFrame, path: str | os.PathLike, title: str = "Table 13",
               metrics: tuple[Metric, ...] = METRICS) -> Path:
    """Grouped bar chart: one panel per metric, per row a bar of this sweep (with its std as an error bar when
    seeded) and, where the table has a ``<metric> paper`` column, one of the paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [m.label for m in metrics if m.label in table]
    fig, axes = plt.subplots(1, len(labels), figsize=(3.4 * len(labels), 3.6), squeeze=False)
    x = np.arange(len(table.index))
    for ax, label in zip(axes[0], labels):
        ours = pd.to_numeric(table[label], errors="coerce").to_numpy(dtype=float)
        spread = (pd.to_numeric(table[f"{label} std"], errors="coerce").to_numpy(dtype=float)
                  if f"{label} std" in table else None)
        ax.bar(x - 0.2, np.nan_to_num(ours), width=0.4, label="this sweep (mean ± std)" if spread is not None
               else "this sweep", color="tab:blue",
               yerr=None if spread is None else np.nan_to_num(spread), capsize=3, ecolor="black")
        for xi, value, raw in zip(x, ours, table[label]):
            if isinstance(raw, str):
                ax.text(xi - 0.2, 0, raw, rotation=90, ha="center", va="bottom", fontsize=7, color="tab:red")
            elif not np.isnan(value):
                ax.text(xi - 0.2, value, f"{value:.3g}", ha="center", va="bottom", fontsize=6)
        if f"{label} paper" in table:
            theirs = pd.to_numeric(table[f"{label} paper"], errors="coerce").to_numpy(dtype=float)
            ax.bar(x + 0.2, np.nan_to_num(theirs), width=0.4, label="paper", color="tab:gray", alpha=0.6)
        metric = next(m for m in metrics if m.label == label)
        ax.set_title(label + (" (lower is better)" if metric.lower_is_better else ""), fontsize=9)
        ax.set_xticks(x, table.index, rotation=30, ha="right", fontsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_table13(root: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Read every results.json below ``root`` and write table13.md / .csv / .png into ``out`` (default ``root``)."""
    df = load_results(root)
    if df.empty:
        raise FileNotFoundError(f"no results.json below {root}: run a sweep first (python experiments/run.py sweep=table13_mini)")
    cells = collect_cells(df)
    if cells.empty:
        raise ValueError(f"no run below {root} is of a Table 13 modality ({', '.join(sorted({m.modality for m in METRICS}))})")
    table = build_table(cells)
    comparisons = noise_comparisons(cells)
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(table, comparisons)
    failed = cells[cells["status"] == FAILED]
    notes = [
        "",
        f"{len(df)} runs below {Path(root)}. Accuracies in %, time-series errors in physical units; the paper's",
        "time-series values (labelled MAE in its Table 13) are its Table 9 temperature MSE, shown beside MSE.",
    ]
    notes += noise_notes(cells, comparisons, "sweep=table13_mini seeds=3")
    notes += [f"failed: {r.row} on {r.modality} ({r.run_dir})" for r in failed.drop_duplicates(["row", "modality"]).itertuples()]
    paths = {"markdown": out / "table13.md", "csv": out / "table13.csv", "png": out / "table13.png"}
    paths["markdown"].write_text(markdown + "\n" + "\n".join(notes) + "\n")
    table.to_csv(paths["csv"])
    plot_table(table, paths["png"], title=f"Table 13: {Path(root).resolve().name} vs paper")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="a sweep directory or a runs root (searched recursively for results.json)")
    parser.add_argument("--out", default=None, help="where to write table13.{md,csv,png} (default: root)")
    args = parser.parse_args(argv)
    try:
        paths = write_table13(args.root, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"table13: {error}", file=sys.stderr)
        return 1
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
