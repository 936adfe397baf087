"""Tests of the experiment harness: config composition for every modality and preset, error messages,
a fast_dev_run per modality (every preset: test_modality_contract.py), results.json and load_results.

Parametrized over the config files, so a new modality (modality/<m>.yaml) or preset is tested without new code.
Process-level behaviour (DDP on CPU, resume after SIGKILL, the CLI) is in test_harness_processes.py.
"""

from __future__ import annotations

import json
import math

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

import core
from experiments.harness import CONFIG_DIR, ConfigError, _options_for_modality, check_config, group_options
from experiments.results import load_results
from experiments.run import train
from tests.conftest import EXPERIMENTS, FAST, MODALITIES, compose_config

# paper Table 14: (mixup, cutmix, drop path) per UniRepLKNet variant
TABLE14 = {"a": (0.3, 0.3, 0.0), "f": (0.3, 0.3, 0.0), "p": (0.3, 0.3, 0.1), "n": (0.5, 0.5, 0.1),
           "t": (0.8, 1.0, 0.2), "s": (0.8, 1.0, 0.4)}


# --- composition ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", MODALITIES)
def test_modality_alone_selects_matching_pieces(modality):
    cfg = compose_config([f"modality={modality}"])
    check_config(cfg)
    assert cfg.modality.name == modality
    assert cfg.data._target_.startswith(f"modalities.{modality}.")
    assert cfg.adapter._target_.startswith(f"modalities.{modality}.")
    assert cfg.backbone.name in core.list_backbones()
    assert cfg.task._target_.startswith("core.tasks.")


def test_backbone_group_has_exactly_the_factory_names():
    assert group_options("backbone") == sorted(core.list_backbones())
    for name in core.list_backbones():
        assert OmegaConf.load(CONFIG_DIR / "backbone" / f"{name}.yaml").name == name
    assert compose_config(["modality=image", "backbone=unireplknet_s"]).backbone.name == "unireplknet_s"


@pytest.mark.parametrize("group", ["trainer", "logger", "callbacks", "debug", "paths"])
def test_every_option_of_the_plain_groups_composes(group):
    for option in group_options(group):
        cfg = compose_config(["modality=image", f"{group}={option}"])
        OmegaConf.to_container(cfg.trainer, resolve=False)
        assert cfg.modality.name == "image"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_composes_on_its_own(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    check_config(cfg)
    assert cfg.modality.name  # a preset picks its modality


@pytest.mark.parametrize("variant", sorted(TABLE14))
def test_imagenet_presets_carry_table14(variant):
    cfg = compose_config([f"experiment=imagenet1k_unireplknet_{variant}"])
    mixup, cutmix, drop_path = TABLE14[variant]
    assert cfg.backbone.name == f"unireplknet_{variant}"
    assert cfg.backbone.drop_path_rate == drop_path
    assert (cfg.task.mixup.mixup_alpha, cfg.task.mixup.cutmix_alpha) == (mixup, cutmix)
    assert cfg.task.optimizer.name == "adamw" and cfg.task.optimizer.lr == 4e-3
    assert cfg.task.optimizer.weight_decay == 0.05 and cfg.task.label_smoothing == 0.1
    assert cfg.task.scheduler.name == "cosine" and cfg.task.scheduler.warmup_epochs == 5
    assert cfg.trainer.max_epochs == 300
    assert cfg.data.batch_size * cfg.trainer.accumulate_grad_batches == 4096
    assert cfg.data.image_size == 224 and cfg.data.augment.re_prob == 0.25
    assert cfg.data.augment.color_jitter == 0.4 and cfg.data.augment.auto_augment
    assert cfg.data.num_classes == 1000


def test_hparams_search_and_slurm_launcher_compose():
    cfg = compose_config(["modality=image", "hparams_search=lr_wd_grid"])
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert set(cfg.hydra.sweeper.params) == {"task.optimizer.lr", "task.optimizer.weight_decay"}
    cfg = compose_config(["modality=image", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                          "hydra/launcher=slurm"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert cfg.trainer.strategy == "ddp"


# --- error messages -----------------------------------------------------------------------------------------


def test_missing_or_unknown_modality_lists_the_choices():
    with pytest.raises(ConfigCompositionException, match="modality") as error:
        compose_config([])
    assert all(m in str(error.value) for m in MODALITIES)
    with pytest.raises(MissingConfigException) as error:
        compose_config(["modality=smell"])
    assert "Available options" in str(error.value) and all(m in str(error.value) for m in MODALITIES)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(MissingConfigException) as error:
        compose_config(["modality=image", "backbone=vit_huge"])
    assert "unireplknet_t" in str(error.value)
    cfg = compose_config(["modality=image", "backbone.name=unireplknet_q"])
    with pytest.raises(ConfigError, match="unknown backbone 'unireplknet_q'; valid choices: .*unireplknet_xl"):
        check_config(cfg)


def test_data_of_another_modality_is_an_error_not_a_mix():
    cfg = compose_config(["modality=image"])
    cfg.data._target_ = "modalities.audio.datamodule.AudioDataModule"
    with pytest.raises(ConfigError, match="belongs to modality 'audio', but modality=image; .*image_mini"):
        check_config(cfg)


def test_data_and_adapter_of_every_other_modality_are_rejected():
    """`modality=A data=<B's data>` (and the same for adapters) fails, for each modality A and a neighbour B."""
    if len(MODALITIES) < 2:
        pytest.skip("only one modality so far")
    for modality, owner in zip(MODALITIES, MODALITIES[1:] + MODALITIES[:1]):
        data = _options_for_modality("data", "_target_", owner)[0]
        cfg = compose_config([f"modality={modality}", f"data={data}"])
        with pytest.raises(ConfigError, match=f"data config '{data}' .* belongs to modality '{owner}', but modality={modality}"):
            check_config(cfg)
        adapter = _options_for_modality("adapter", "_target_", owner)[0]
        cfg = compose_config([f"modality={modality}", f"adapter={adapter}"])
        with pytest.raises(ConfigError, match=f"belongs to modality '{owner}', but modality={modality}"):
            check_config(cfg)


def test_missing_real_dataset_explains_source_and_layout(make_config, tmp_path):
    cfg = make_config(["experiment=imagenet1k_unireplknet_a", f"data.root={tmp_path}/imagenet", *FAST])
    with pytest.raises(FileNotFoundError, match="image-net.org") as error:
        train(cfg)
    assert "<root>/train/<class>/<image>" in str(error.value)


def test_resume_without_a_checkpoint_says_how(make_config, mini_image_root):
    cfg = make_config(["modality=image", f"data.root={mini_image_root}", "ckpt_path=last", *FAST])
    with pytest.raises(ConfigError, match="hydra.run.dir=<that run dir>"):
        train(cfg)


# --- runs -----------------------------------------------------------------------------------------------


def assert_deploy_agrees(record: dict) -> None:
    """Every test metric is reported twice, before and after reparameterize(), with the same value."""
    tested = [k for k in record if k.startswith("test/") and not k.endswith("_deploy")]
    assert tested
    for key in tested:
        assert math.isclose(record[key], record[f"{key}_deploy"], rel_tol=1e-3, abs_tol=1e-4), key
    assert record["deploy_max_logit_diff"] < 1e-3
    assert record["params_deploy"] <= record["params_train"]


@pytest.mark.parametrize("modality", MODALITIES)
def test_fast_dev_run_per_modality(modality, make_config, tmp_path):
    """`modality=<m> debug=fast_dev_run` runs fit, test and deploy test and writes a complete results.json."""
    run_dir = tmp_path / "run"
    record = train(make_config([f"modality={modality}", *FAST]))
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk == record
    for key in ("modality", "dataset", "backbone", "kernel_sizes", "params_deploy", "train_wall_time_s",
                "train_samples_per_s", "git_commit", "global_step"):
        assert key in record, key
    assert record["modality"] == modality and record["backbone"] == "unireplknet_test"
    assert record["global_step"] == 1
    assert record["skipped_inputs"] == 0 and isinstance(record["input_counts"], dict)  # the mini data is clean
    assert_deploy_agrees(record)
    assert (run_dir / "checkpoints" / "deploy.pt").is_file()
    assert OmegaConf.load(run_dir / "config.yaml").modality.name == modality  # the resolved config


def test_limited_run_writes_metrics_checkpoints_and_loads_back(make_config, mini_image_root, tmp_path):
    runs = tmp_path / "runs"
    single = runs / "image" / "unireplknet_test" / "2030-01-01_00-00-00"
    swept = runs / "multirun" / "image" / "2030-01-01_00-00-01" / "0"
    first = train(make_config(
        ["modality=image", f"data.root={mini_image_root}", "debug=limit_batches", "data.batch_size=8",
         "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"],
        run_dir=single,
    ))
    swept.mkdir(parents=True)  # a sweep job's record, as a multirun writes it one level deeper
    (swept / "results.json").write_text(json.dumps({**first, "run_dir": str(swept.resolve())}))

    assert (single / "checkpoints" / "best.ckpt").is_file() and (single / "checkpoints" / "last.ckpt").is_file()
    assert first["tested_checkpoint"].endswith("best.ckpt")
    assert first["global_step"] == 8 and first["epochs"] == 2 and first["train_samples"] == 64
    metrics = (single / "csv" / "metrics.csv").read_text().splitlines()
    assert "val/acc" in metrics[0] and "train/loss_step" in metrics[0] and len(metrics) > 3
    assert first["kernel_sizes"] == [[3], [13], [13, 3], [13]]

    df = load_results(runs)
    assert len(df) == 2
    assert set(df["run_dir"]) == {str(single.resolve()), str(swept.resolve())}
    assert {"modality", "dataset", "backbone", "params_deploy", "test/acc", "test/acc_deploy",
            "train_wall_time_s", "train_samples_per_s", "git_commit", "choices.data"} <= set(df.columns)
    assert (df["dataset"] == "image_mini").all() and (df["test/acc"] == df["test/acc_deploy"]).all()
    assert (df["backbone"] == "unireplknet_test").all() and (df["choices.trainer"] == "cpu").all()
    assert load_results(tmp_path / "nothing_here").empty


def test_run_summary_lists_test_metrics_with_their_deploy_twins():
    from experiments.run import summary

    record = {"modality": "audio", "backbone": "unireplknet_test", "test/acc": 0.925, "test/acc_deploy": 0.925,
              "test/mse_linear": 2.5, "train_wall_time_s": 12.0}
    lines = summary(record).splitlines()
    assert lines[0].startswith("audio / unireplknet_test")
    assert lines[1].split() == ["test/acc", "0.9250", "|", "0.9250"]
    assert lines[2].split() == ["test/mse_linear", "2.5000"] and len(lines) == 3
