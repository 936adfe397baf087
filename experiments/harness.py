"""The steps behind ``experiments/run.py``: check the composed config, build callbacks and loggers, test and
deploy-test the trained task, write ``results.json``.

Nothing here knows a modality: pieces are matched by the rule that a modality ``m`` keeps its DataModule and
adapter in the package ``modalities.m``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import subprocess
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

import core
from core.backbones import unireplknet
from core.tasks import count_parameters
from core.tasks.base import TASK_BACKBONE_PREFIXES
from experiments.callbacks import RunStats, evaluate_ema

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
RESULTS_FILE = "results.json"


class ConfigError(ValueError):
    """The composed pieces do not fit together (wrong modality, unknown backbone, missing resume point)."""


# --- checks --------------------------------------------------------------------------------------------


def group_options(group: str) -> list[str]:
    """The option names of a config group (the yaml files under experiments/configs/<group>/)."""
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def _options_for_modality(group: str, key: str, modality: str) -> list[str]:
    """Options of ``group`` whose import path ``key`` lies in ``modalities.<modality>``."""
    found = []
    for name in group_options(group):
        node = OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")
        if str(node.get(key, "")).startswith(f"modalities.{modality}."):
            found.append(name)
    return found


def check_config(cfg: DictConfig) -> None:
    """Fail early, with the valid choices, when the composed pieces do not agree."""
    modality = cfg.modality.get("name") if cfg.get("modality") else None
    if not modality:
        raise ConfigError(f"choose a modality: modality=<one of {', '.join(group_options('modality'))}>")
    for group in ("data", "adapter"):
        node = cfg.get(group)
        if node is None or "_target_" not in node:
            raise ConfigError(f"modality={modality} selected no {group} config ({group}/<name>.yaml with '_target_')")
        target = str(node["_target_"])
        if not target.startswith(f"modalities.{modality}."):
            owner = target.split(".")[1] if target.startswith("modalities.") else target
            valid = ", ".join(_options_for_modality(group, "_target_", modality)) or "none yet"
            raise ConfigError(
                f"{group} config '{_choice(group)}' ({target}) belongs to modality '{owner}', but modality={modality}; "
                f"{group} options for {modality}: {valid}"
            )
    name = cfg.backbone.name
    if name not in core.list_backbones():
        raise ConfigError(f"unknown backbone {name!r}; valid choices: {', '.join(core.list_backbones())}")


def check_task_fits_data(task: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """The adapter's output channels C' must be what the DataModule announces as ``in_chans``."""
    adapter = getattr(task, "adapter", None)
    if adapter is not None and hasattr(datamodule, "in_chans") and adapter.out_chans != datamodule.in_chans:
        raise ConfigError(
            f"adapter {type(adapter).__name__} outputs C'={adapter.out_chans} channels but "
            f"{type(datamodule).__name__} announces in_chans={datamodule.in_chans}"
        )


def _choice(group: str) -> str:
    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get(group))
    return "?"


# --- building ------------------------------------------------------------------------------------------


def stage_kernel_sizes(name: str, per_stage) -> list[list[int]]:
    """``backbone.stage_kernel_sizes`` -> per-block ``kernel_sizes`` (the rule: ``unireplknet.stage_kernel_sizes``)."""
    if not name.startswith("unireplknet_"):
        raise ConfigError(f"backbone.stage_kernel_sizes applies to UniRepLKNet only, not to {name!r}")
    try:
        return unireplknet.stage_kernel_sizes(name.removeprefix("unireplknet_"), per_stage)
    except ValueError as error:
        raise ConfigError(f"backbone.stage_kernel_sizes: {error}") from None


def expand_stage_kernels(cfg: DictConfig) -> None:
    """Replace ``backbone.stage_kernel_sizes`` (if set) by the per-block ``backbone.kernel_sizes`` it stands for."""
    per_stage = cfg.backbone.get("stage_kernel_sizes")
    with open_dict(cfg):
        cfg.backbone.pop("stage_kernel_sizes", None)
        if per_stage is None:
            return
        if cfg.backbone.get("kernel_size") is not None or cfg.backbone.get("kernel_sizes") is not None:
            raise ConfigError("give backbone.stage_kernel_sizes, backbone.kernel_size or backbone.kernel_sizes, not two")
        cfg.backbone.kernel_sizes = stage_kernel_sizes(cfg.backbone.name, per_stage)


def build_task(cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningModule:
    """Instantiate ``cfg.task``; keys left as ``???`` are taken from the DataModule attribute of that name."""
    expand_stage_kernels(cfg)
    from_data = {}
    for key in cfg.task:
        if OmegaConf.is_missing(cfg.task, key):
            if not hasattr(datamodule, key):
                raise ConfigError(f"task.{key} is ??? but {type(datamodule).__name__} has no attribute {key!r}")
            from_data[key] = getattr(datamodule, key)
    # not recursive: the adapter / model / metric specs reach the task as plain `_target_` dicts it stores
    return instantiate(cfg.task, _convert_="all", _recursive_=False, **from_data)


def task_backbone(task: torch.nn.Module) -> torch.nn.Module:
    """The backbone module inside a task (``backbone``, ``model.backbone`` or ``detector.backbone.body``)."""
    for prefix in TASK_BACKBONE_PREFIXES:
        try:
            return task.get_submodule(prefix.rstrip("."))
        except AttributeError:
            continue
    raise ConfigError(f"{type(task).__name__} has no backbone under any of {', '.join(TASK_BACKBONE_PREFIXES)}")


def _to_channels_last(_module, args):
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
                 else a for a in args)


def apply_speed(task: torch.nn.Module, speed: DictConfig | dict | None) -> dict:
    """Apply the ``speed`` options to the task's backbone in place; returns what was applied.

    channels_last: 4-D weights and the backbone's 4-D inputs in channels_last (same values; oneDNN picks its
    NHWC kernels). compile: ``nn.Module.compile`` on the backbone (its state-dict keys stay as they are, so
    checkpoints, resuming and the deploy step are unchanged; the deploy copy runs eagerly). threads: the
    process's intra-op thread count (``torch.set_num_threads``; null leaves torch's default, one per core): a
    run whose DataLoader workers keep the cores busy trains faster when the step does not compete with them.
    """
    speed = dict(speed or {})
    unknown = set(speed) - {"channels_last", "compile", "threads"}
    if unknown:
        raise ConfigError(f"unknown speed option(s) {sorted(unknown)}; valid: channels_last, compile, threads")
    threads = speed.get("threads")
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"speed.threads must be null or a positive integer, got {threads!r}")
        torch.set_num_threads(int(threads))
    backbone = task_backbone(task)
    if speed.get("channels_last"):
        backbone.to(memory_format=torch.channels_last)
        backbone.register_forward_pre_hook(_to_channels_last)
    if speed.get("compile"):
        # static shapes: a new input size recompiles (Dynamo's recompile_limit, then eager) instead of compiling one
        # symbolic-size graph, which Inductor 2.9 failed to lower for the image mini's backbone (a sympy relational)
        backbone.compile(dynamic=False)
    return {**{key: bool(speed.get(key)) for key in ("channels_last", "compile")}, "threads": torch.get_num_threads()}


def run_eagerly(task: torch.nn.Module) -> None:
    """Undo ``nn.Module.compile`` (``speed.compile``) on every submodule: their plain forward runs again."""
    for module in task.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None  # what nn.Module.compile set; torch has no public way to undo it


def instantiate_group(node: DictConfig | None) -> list:
    """Instantiate every entry (callbacks, loggers) of a ``name: {_target_: ...}`` mapping; null entries are off."""
    if not node:
        return []
    return [instantiate(entry) for entry in node.values() if entry is not None and "_target_" in entry]


def resume_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """``last`` -> ``<run_dir>/checkpoints/last.ckpt`` (must exist); any other value is used as given."""
    if ckpt_path != "last":
        return ckpt_path
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise ConfigError(
            f"ckpt_path=last: there is no {last}. Resume in the interrupted run's directory: "
            "ckpt_path=last hydra.run.dir=<that run dir>"
        )
    return str(last)


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """The resolved job config (without Hydra's own node) as <run_dir>/config.yaml."""
    job = copy.deepcopy(cfg)
    with open_dict(job):
        job.pop("hydra", None)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(job, resolve=True))


# --- evaluation ------------------------------------------------------------------------------------------


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return path if path and Path(path).is_file() else None


def _max_logit_diff(trained: torch.nn.Module, task, datamodule) -> float | None:
    """The deploy equivalence check on the first non-empty test batch (``Task.deploy_difference``)."""
    for inputs, target in datamodule.test_dataloader():
        if len(target):
            return task.deploy_difference(trained, move_data_to_device(inputs, next(task.parameters()).device))
    return None


def test_and_deploy(trainer: L.Trainer, task, datamodule, run_dir: Path, deploy: bool = True) -> dict:
    """Test the best checkpoint; then re-parameterize, test again and save the deploy weights.

    Returns the test metrics of both passes (``test/acc`` and ``test/acc_deploy`` ...; with the ``WeightEMA``
    callback also those of the EMA weights of the tested checkpoint, ``test/acc_ema`` ...), the parameter counts
    of both structures and the deploy equivalence check (max |logit difference| on one test batch).
    """
    best = _best_checkpoint(trainer)
    out: dict[str, Any] = {"tested_checkpoint": best}
    out.update(trainer.test(task, datamodule=datamodule, ckpt_path=best)[0])
    out.update(evaluate_ema(trainer, task, datamodule))  # test/acc_ema ... when the WeightEMA callback is on
    out["params_train"] = count_parameters([task])
    if not deploy or not hasattr(task, "reparameterize"):
        return out
    task.eval()
    run_eagerly(task)  # a copy of a compiled module would still call the original's forward
    trained = copy.deepcopy(task)
    task.reparameterize()
    out.update(trainer.test(task, datamodule=datamodule)[0])
    out["params_deploy"] = count_parameters([task])
    out["deploy_max_logit_diff"] = _max_logit_diff(trained, task, datamodule)
    if trainer.is_global_zero:
        path = run_dir / "checkpoints" / "deploy.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        task.save_deploy(path)
        out["deploy_weights"] = str(path)
    return out


# --- results ----------------------------------------------------------------------------------------------


def git_state() -> dict:
    """Commit of the working tree the run came from, and whether it had uncommitted changes."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=CONFIG_DIR, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def collect_results(cfg: DictConfig, trainer: L.Trainer, task, datamodule, metrics: dict, run_dir: Path) -> dict:
    """One flat record per run (see experiments/results.py for reading them back)."""
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    backbone = getattr(task, "backbone", None)
    stats = next((cb for cb in trainer.callbacks if isinstance(cb, RunStats)), None)
    checkpoint = trainer.checkpoint_callback
    record = {
        "status": "completed",
        "modality": cfg.modality.name,
        "dataset": choices.get("data"),
        "data_root": str(Path(cfg.data.root).resolve()) if cfg.data.get("root") is not None else None,
        "experiment": choices.get("experiment"),
        "backbone": cfg.backbone.name,
        "kernel_sizes": core.backbone_kernel_sizes(backbone, cfg.backbone.name) if backbone is not None else None,
        "backbone_options": backbone_options(cfg),
        "ablation": _plain(cfg.get("ablation")),
        "num_classes": getattr(datamodule, "num_classes", None),
        "in_chans": getattr(datamodule, "in_chans", None),
        **metrics,
        "best_val_score": checkpoint.best_model_score if checkpoint is not None else None,
        "monitor": checkpoint.monitor if checkpoint is not None else None,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        **((stats.fit_summary or stats.summary(trainer.world_size)) if stats is not None else {}),
        # every modality's DataModule counts the inputs that never reached the model (unreadable, missing)
        "skipped_inputs": getattr(datamodule, "skipped_inputs", None),
        "input_counts": getattr(datamodule, "input_counts", None),
        "seed": cfg.seed,
        **git_state(),
        "run_dir": str(run_dir.resolve()),
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "choices": choices,
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
    }
    return _jsonable(record)


# the Section 3 ablation options of UniRepLKNet (core/backbones/unireplknet.py), recorded with every run
ABLATION_OPTIONS = ("extra_structure", "reparam", "stage_layouts")


def _plain(value: Any) -> Any:
    """A config node as plain Python (dicts / lists), anything else unchanged."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def backbone_options(cfg: DictConfig) -> dict:
    """The run's ablation options as configured (None: the published structure)."""
    return {key: _plain(cfg.backbone.get(key)) for key in ABLATION_OPTIONS}


def failure_record(cfg: DictConfig, error: BaseException) -> dict:
    """What results.json says about a run that raised: status "failed", the error and where it was raised.

    A sweep (Hydra's basic launcher runs every job, then reports the first failure) thus keeps one record per
    job, and the tables show the failed cells instead of silently leaving them out.
    """
    def select(key: str) -> Any:
        try:
            return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        except Exception:  # noqa: BLE001  (a config that does not resolve is what may have failed)
            return None

    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    return _jsonable({
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(error)),
        "modality": select("modality.name"),
        "dataset": choices.get("data"),
        "experiment": choices.get("experiment"),
        "backbone": select("backbone.name"),
        "kernel_size": select("backbone.kernel_size"),
        "backbone_options": {key: _plain(select(f"backbone.{key}")) for key in ABLATION_OPTIONS},
        "ablation": _plain(select("ablation")),
        "seed": select("seed"),
        **git_state(),
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "choices": choices,
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
    })


def record_failure(cfg: DictConfig, error: BaseException) -> Path | None:
    """Write the failure record to the run directory (global rank 0 only); returns its path."""
    if rank_zero_only.rank != 0:
        return None
    try:
        run_dir = Path(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    record = failure_record(cfg, error)
    record["run_dir"] = str(run_dir.resolve())
    return write_results(record, run_dir)


def write_results(record: dict, run_dir: Path) -> Path:
    path = run_dir / RESULTS_FILE
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path
