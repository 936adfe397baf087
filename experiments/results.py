"""Read the ``results.json`` files of many runs back as one pandas DataFrame.

    from experiments.results import load_results
    df = load_results("runs")          # one row per run, single runs and multirun sweep jobs alike

Nested entries are flattened with dots (``choices.trainer``); list-valued entries (kernel sizes) stay lists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

RESULTS_FILE = "results.json"


def find_results(root: str | os.PathLike) -> list[Path]:
    """Every results.json below ``root`` (any depth), sorted by path."""
    return sorted(Path(root).rglob(RESULTS_FILE))


def load_results(root: str | os.PathLike = "runs") -> pd.DataFrame:
    """One row per run found below ``root``; empty (no columns) when there are none.

    Columns include modality, dataset, backbone, kernel_sizes, params_deploy, the test metrics
    (``test/acc``, ``test/acc_deploy`` ...), train_wall_time_s, train_samples_per_s, git_commit and run_dir.
    """
    records = []
    for path in find_results(root):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"unreadable results file {path}: {error}") from error
        record.setdefault("run_dir", str(path.parent.resolve()))
        records.append(record)
    if not records:
        return pd.DataFrame()
    return pd.json_normalize(records, sep=".", max_level=1)
