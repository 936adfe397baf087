"""Lightning callbacks of the harness: training wall time and throughput that survive a resume.

``RunStats`` keeps its totals in the checkpoint (``state_dict``), so a run that is killed and resumed from
``last.ckpt`` reports the time and samples of the epochs it kept, as an uninterrupted run would. The totals
are frozen in ``fit_summary`` when fit ends: testing a checkpoint afterwards restores callback states too.
"""

from __future__ import annotations

import time

import lightning as L


class RunStats(L.Callback):
    """Training time (validation excluded), fit wall time and samples seen, summed over all ranks."""

    def __init__(self):
        self.train_seconds = 0.0  # time inside training epochs, validation excluded
        self.fit_seconds = 0.0  # wall time of fit, validation included
        self.samples = 0  # training samples seen by this process
        self._train_started: float | None = None
        self._fit_started: float | None = None
        self.fit_summary: dict | None = None  # the totals when fit ended

    # the training clock pauses while validation runs inside a training epoch
    def _start(self) -> None:
        if self._train_started is None:
            self._train_started = time.perf_counter()

    def _pause(self) -> None:
        if self._train_started is not None:
            self.train_seconds += time.perf_counter() - self._train_started
            self._train_started = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_started = time.perf_counter()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._pause()
        if self._fit_started is not None:
            self.fit_seconds += time.perf_counter() - self._fit_started
            self._fit_started = None
        self.fit_summary = self.summary(trainer.world_size)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._pause()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._pause()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.training and not trainer.sanity_checking and not trainer.fit_loop.epoch_loop.done:
            self._start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.samples += len(batch[1])

    def summary(self, world_size: int = 1) -> dict:
        """Totals for results.json: samples/s counts every rank (each rank sees its own share)."""
        samples = self.samples * world_size
        return {
            "train_wall_time_s": round(self.fit_seconds, 3),
            "train_time_s": round(self.train_seconds, 3),
            "train_samples": samples,
            "train_samples_per_s": round(samples / self.train_seconds, 2) if self.train_seconds > 0 else None,
        }

    # persisted in every checkpoint: a resumed run continues the totals
    def state_dict(self) -> dict:
        train_seconds = self.train_seconds
        if self._train_started is not None:
            train_seconds += time.perf_counter() - self._train_started
        fit_seconds = self.fit_seconds
        if self._fit_started is not None:
            fit_seconds += time.perf_counter() - self._fit_started
        return {"train_seconds": train_seconds, "fit_seconds": fit_seconds, "samples": self.samples}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_seconds = float(state_dict["train_seconds"])
        self.fit_seconds = float(state_dict["fit_seconds"])
        self.samples = int(state_dict["samples"])
