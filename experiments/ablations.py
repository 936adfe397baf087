"""Paper Tables 1, 2 and 4 (the Section 3 architecture ablations) from the results.json files of a sweep.

    python experiments/run.py sweep=table1_mini               # table2_mini, table4_mini; *_paper: ImageNet
    python experiments/ablations.py runs/multirun/table1_mini/<timestamp>

For every ablation table found below the root (the sweeps record ``ablation.table`` in each results.json) it
writes ``<table>.md``, ``<table>.csv`` and ``<table>.png`` into the root (``--out`` elsewhere) and prints the
markdown. Rows are the table's options (Table 1: the block's extra structure, Table 2: the re-parameterization
form, Table 4: the LarK / SmaK layout of stage 3), columns each modality's test metric of this sweep (mean ± std
over seeds, with the noise marks of experiments/table13.py) beside the paper's ImageNet accuracy, ADE20K mIoU
and parameter count of the same row (measured on UniRepLKNet-S-sized models, so compare rows, not values).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.backbones.unireplknet import LARGE_KERNEL_MIN, parse_layout
from experiments.results import load_results
from experiments.table13 import (FAILED, METRICS, Metric, noise_comparisons, noise_notes, plot_table, seed_values,
                                 to_markdown)

# every modality's test metric (Table 13's, and ImageNet for the *_paper sweeps)
ABLATION_METRICS = tuple(m for m in METRICS if m.label != "Time-series MAE") + (
    Metric("image", "Image Acc (%)", ("test/acc",), scale=100.0),
)


@dataclass(frozen=True)
class Ablation:
    """One of the paper's Section 3 tables: which backbone option it varies and the paper's rows."""

    title: str
    option: str
    # row label -> (ImageNet acc %, ADE20K mIoU %, params M); params None where the table does not give them
    paper: dict[str, tuple[float, float, float | None]] = field(default_factory=dict)


EXTRA_LABELS = {"none": "No extra structure", "bottleneck": "(A) Bottleneck", "two_1x1": "(B) Two 1x1",
                "two_dw3x3": "(C) Two DW 3x3", "se": "(D) SE Block"}
REPARAM_LABELS = {"none": "No re-param", "dilated": "Dilated Reparam", "same_kernel": "Same kernel size",
                  "same_eq_kernel": "Same eq kernel size"}
# stage-3 letters of a run -> the paper's Table 4 row (the mini sweep scales 9 / 27 blocks down to 1 / 3)
TABLE4_ROWS = {
    "L" * 9: "9 LarK", "L": "9 LarK",
    "L" * 27: "27 LarK", "LLL": "27 LarK",
    "LS" * 13 + "L": "14 LarK + 13 SmaK", "LSL": "14 LarK + 13 SmaK",
    "LSS" * 9: "9 LarK + 18 SmaK", "LSS": "9 LarK + 18 SmaK",
    "LNN" * 9: "9 LarK + 18 SmaK w/o 3x3", "LNN": "9 LarK + 18 SmaK w/o 3x3",
}

TABLES = {
    "table1": Ablation("Table 1: the block's extra structure", "extra_structure", {
        "No extra structure": (81.2, 45.1, 31.3), "(A) Bottleneck": (81.5, 46.3, 32.9), "(B) Two 1x1": (81.3, 46.2, 32.9),
        "(C) Two DW 3x3": (81.3, 45.4, 31.4), "(D) SE Block": (81.6, 46.5, 32.9)}),
    "table2": Ablation("Table 2: re-parameterization of the 13x13 convs", "reparam", {
        "No re-param": (81.4, 45.8, None), "Dilated Reparam": (81.6, 46.5, None), "Same kernel size": (81.6, 46.2, None),
        "Same eq kernel size": (81.6, 46.2, None)}),
    "table4": Ablation("Table 4: LarK and SmaK blocks in stage 3", "stage_layouts", {
        "9 LarK": (81.6, 46.5, 32.9), "27 LarK": (82.3, 49.0, 56.7), "14 LarK + 13 SmaK": (82.3, 48.8, 55.9),
        "9 LarK + 18 SmaK": (82.3, 48.8, 55.6), "9 LarK + 18 SmaK w/o 3x3": (82.2, 47.8, 55.5)}),
}
PAPER_COLUMNS = ("paper Acc (%)", "paper mIoU (%)", "paper Params (M)")
# (the paper's rows named "None" are spelled out: pandas reads a "None" label in the CSV back as missing)


def _option(run: pd.Series, key: str):
    value = run.get(f"backbone_options.{key}")
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def stage3_letters(run: pd.Series) -> str | None:
    """Stage 3 of a run as LarK / SmaK / no-spatial-conv letters (from its kernel sizes, else its layout)."""
    kernels = run.get("kernel_sizes")
    if isinstance(kernels, list) and len(kernels) == 4:
        return "".join("L" if k >= LARGE_KERNEL_MIN else ("N" if k == 0 else "S") for k in kernels[2])
    layouts = _option(run, "stage_layouts")
    if isinstance(layouts, list) and len(layouts) == 4 and layouts[2] is not None:
        return parse_layout(layouts[2])
    return None


def row_label(table: str, run: pd.Series) -> str:
    """The row of ``table`` a run belongs to (the paper's wording where the paper has the row)."""
    if table == "table1":
        value = _option(run, "extra_structure") or "se"
        return EXTRA_LABELS.get(value, str(value))
    if table == "table2":
        value = _option(run, "reparam") or "dilated"
        if isinstance(value, list):
            return "branches (k, r): " + " ".join(f"({k},{r})" for k, r in value)
        return REPARAM_LABELS.get(value, str(value))
    letters = stage3_letters(run)
    if letters is None:
        return "unknown layout"
    row = TABLE4_ROWS.get(letters)
    return f"{row} ({letters})" if row else letters


def collect_ablation_cells(df: pd.DataFrame, table: str) -> pd.DataFrame:
    """One row per (table row, metric) for the runs of ``table``: mean / std / per-seed values like
    ``table13.collect_cells`` (the latest completed run per seed counts)."""
    runs = df[df.get("ablation.table", pd.Series(index=df.index, dtype=object)) == table].copy()
    runs["status"] = runs.get("status", pd.Series("completed", index=runs.index)).fillna("completed")
    runs["finished"] = runs.get("finished", pd.Series("", index=runs.index)).fillna("")
    runs["seed"] = runs.get("seed", pd.Series(0, index=runs.index)).fillna(0)
    runs["row"] = [row_label(table, run) for _, run in runs.iterrows()]
    cells = []
    for metric in ABLATION_METRICS:
        for row, group in runs[runs["modality"] == metric.modality].groupby("row", sort=False):
            values, status, run_dir = seed_values(group, metric)
            cells.append({
                "row": row, "metric": metric.label, "modality": metric.modality,
                "value": float(np.mean(values)) if values else float("nan"),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
                "seeds": len(values), "values": values, "status": status, "runs": len(group), "run_dir": run_dir,
            })
    return pd.DataFrame(cells, columns=["row", "metric", "modality", "value", "std", "seeds", "values", "status",
                                        "runs", "run_dir"])


def _paper_key(table: str, row: str) -> str:
    return row.split(" (")[0] if table == "table4" else row


def build_ablation_table(cells: pd.DataFrame, table: str) -> pd.DataFrame:
    """Rows in the paper's order (rows it lacks after), per metric the mean (``<metric> std`` when seeded), and
    the paper's ImageNet accuracy, ADE20K mIoU and parameters of the same row."""
    spec = TABLES[table]
    order = list(spec.paper)
    found = list(dict.fromkeys(cells["row"]))
    rows = sorted(found, key=lambda r: (order.index(_paper_key(table, r)) if _paper_key(table, r) in order
                                        else len(order), r))
    out = pd.DataFrame(index=pd.Index(rows, name=spec.title.split(":")[0] + " row"))
    seeded = bool((cells["seeds"] > 1).any())
    for metric in ABLATION_METRICS:
        mine = cells[cells["metric"] == metric.label]
        if mine.empty:
            continue
        by_row = mine.set_index("row")
        out[metric.label] = pd.Series(
            [(by_row.loc[r, "value"] if by_row.loc[r, "status"] == "completed" else by_row.loc[r, "status"])
             if r in by_row.index else float("nan") for r in rows], index=out.index, dtype=object)
        if seeded:
            out[f"{metric.label} std"] = [by_row.loc[r, "std"] if r in by_row.index else float("nan") for r in rows]
    for i, column in enumerate(PAPER_COLUMNS):
        out[column] = [(spec.paper.get(_paper_key(table, r)) or (None,) * 3)[i] for r in rows]
        out[column] = pd.to_numeric(out[column], errors="coerce")
    return out


def write_ablations(root: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, dict[str, Path]]:
    """Write ``<table>.md / .csv / .png`` for every ablation table below ``root``; returns their paths per table."""
    df = load_results(root)
    if df.empty:
        raise FileNotFoundError(f"no results.json below {root}: run a sweep first (python experiments/run.py "
                                "sweep=table1_mini)")
    tables = sorted(set(df["ablation.table"].dropna())) if "ablation.table" in df else []
    tables = [t for t in tables if t in TABLES]
    if not tables:
        raise ValueError(f"no run below {root} was started by an ablation sweep (sweep=table1_mini, table2_mini, "
                         "table4_mini or their *_paper versions record ablation.table)")
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for table in tables:
        cells = collect_ablation_cells(df, table)
        frame = build_ablation_table(cells, table)
        comparisons = noise_comparisons(cells)
        runs = int((df["ablation.table"] == table).sum())
        notes = ["", f"{runs} runs below {Path(root)}. This sweep: test metrics (accuracies in %, time-series MSE in "
                     "physical units).", "The paper's columns: ImageNet-1K accuracy, ADE20K mIoU and parameters of "
                     "the same row (UniRepLKNet-S-sized, 100 epochs).", ""]
        notes += noise_notes(cells, comparisons, f"sweep={table}_mini seeds=3")
        notes += [f"failed: {c.row} on {c.modality} ({c.run_dir})"
                  for c in cells[cells["status"] == FAILED].itertuples()]
        paths = {"markdown": out / f"{table}.md", "csv": out / f"{table}.csv", "png": out / f"{table}.png"}
        markdown = f"{TABLES[table].title}\n\n" + to_markdown(frame, comparisons, ABLATION_METRICS)
        paths["markdown"].write_text(markdown + "\n" + "\n".join(notes) + "\n")
        frame.to_csv(paths["csv"])
        plot_table(frame.drop(columns=list(PAPER_COLUMNS)), paths["png"],
                   title=f"{TABLES[table].title} ({Path(root).resolve().name})", metrics=ABLATION_METRICS)
        written[table] = paths
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="a sweep directory or a runs root (searched recursively for results.json)")
    parser.add_argument("--out", default=None, help="where to write <table>.{md,csv,png} (default: root)")
    args = parser.parse_args(argv)
    try:
        written = write_ablations(args.root, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"ablations: {error}", file=sys.stderr)
        return 1
    for paths in written.values():
        print(paths["markdown"].read_text())
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
