"""Shared test fixtures: compose the real experiment config (then shrink it), and a small mini image set.

Tests run the harness in-process with ``experiments.run.train(cfg)`` on a config composed exactly as
``experiments/run.py`` composes it, with the run directory redirected to a temporary path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.harness import CONFIG_DIR, group_options

REPO_ROOT = Path(__file__).resolve().parents[1]
MODALITIES = group_options("modality")
EXPERIMENTS = group_options("experiment")


def preset_modality(experiment: str) -> str | None:
    """The modality an experiment preset selects (``override /modality: <m>``, following same-group includes)."""
    node = OmegaConf.load(CONFIG_DIR / "experiment" / f"{experiment}.yaml")
    for entry in node.get("defaults", []):
        if isinstance(entry, str):
            if entry != "_self_" and (found := preset_modality(entry)):
                return found
            continue
        for key, value in entry.items():
            if key.replace("override", "").strip() == "/modality":
                return value
    return None


# shrink any composed run to seconds: one batch per loop, one process, no workers, tiny backbone
FAST = ["debug=fast_dev_run", "backbone=unireplknet_test"]


def compose_config(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """The config ``experiments/run.py <overrides>`` would run, with its run dir set to ``run_dir``.

    Relative paths (data, runs) are anchored at the repository root, wherever pytest was started.
    """
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name="test"):
        cfg = compose("train", overrides=[f"paths.root_dir={REPO_ROOT}", *overrides], return_hydra_config=True)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
            cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_config(tmp_path) -> Callable[..., DictConfig]:
    """``make_config(overrides)``: compose with the run dir in this test's tmp_path (``<tmp>/run``)."""

    def make(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
        return compose_config(overrides, run_dir or tmp_path / "run")

    return make


@pytest.fixture(scope="session")
def mini_image_root(tmp_path_factory) -> Path:
    """A small mini image set (ImageFolder layout, 10 classes, 8/4/4 images per class) for fast tests."""
    from modalities.image.mini import build_mini

    return build_mini(tmp_path_factory.mktemp("data") / "mini_image", splits={"train": 8, "val": 4, "test": 4})
