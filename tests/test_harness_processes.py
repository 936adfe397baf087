"""Process-level tests of experiments/run.py: the CLI's error output, 2-process DDP on CPU (gloo), and a run
killed with SIGKILL mid-training that resumes with ``ckpt_path=last`` to the same end state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import torch

from tests.conftest import REPO_ROOT

RUN = [sys.executable, str(REPO_ROOT / "experiments" / "run.py")]


def tiny_image_run(mini_root, run_dir) -> list[str]:
    return [
        "modality=image", f"data.root={mini_root}", "data.batch_size=4", "data.num_workers=0",
        f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=true", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=2", "trainer.log_every_n_steps=1",
    ]


def run_cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*RUN, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_lists_valid_modalities_on_a_typo():
    done = run_cli(["modality=imag"])
    assert done.returncode != 0
    assert "Could not find 'modality/imag'" in done.stderr and "image" in done.stderr


def test_ddp_two_cpu_processes(mini_image_root, tmp_path):
    run_dir = tmp_path / "ddp"
    done = run_cli([
        *tiny_image_run(mini_image_root, run_dir), "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.max_epochs=1", "trainer.limit_train_batches=3",
    ])
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["world_size"] == 2
    assert record["global_step"] == 3
    assert record["train_samples"] == 2 * 3 * 4  # both processes trained on their own shard
    assert record["test/acc"] == record["test/acc_deploy"]
    assert "distributed_backend=gloo" in done.stdout + done.stderr


def test_sigkill_mid_training_then_resume_ends_as_if_uninterrupted(mini_image_root, tmp_path):
    run_dir = tmp_path / "killed"
    args = [*tiny_image_run(mini_image_root, run_dir), "trainer.max_epochs=4", "trainer.limit_train_batches=5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*RUN, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               env=env)
    seen = []

    def read_progress():  # the progress bar (stdout) shows "Epoch 2:" once epoch 1 and its checkpoint are complete
        while chunk := process.stdout.read1(4096):
            seen.append(chunk.decode(errors="replace"))

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while "Epoch 2:" not in "".join(seen[-20:]) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    reader.join(timeout=10)
    assert process.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    assert not (run_dir / "results.json").exists()
    killed_at = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert killed_at["global_step"] == 10  # two full epochs saved; the third was cut short

    done = run_cli([*args, "ckpt_path=last"])
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["global_step"] == 4 * 5 and record["epochs"] == 4
    assert record["train_samples"] == 4 * 5 * 4  # the statistics continue from the checkpoint
    assert record["test/acc"] == record["test/acc_deploy"]
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 20 and final["epoch"] == 3
