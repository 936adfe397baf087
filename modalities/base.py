"""What every modality's DataModule shares, and the contract it honours (docs/architecture.md).

A modality's ``datamodule.py`` subclasses ``ModalityDataModule`` and supplies only what is its own:

- ``in_chans``: C' of the adapter's output, the backbone's input channels;
- ``mini``: its ``mini`` module, whose ``build_mini(root, seed=...)`` writes the offline mini dataset through
  ``modalities.mini_build.build_atomically`` (a no-op when it is complete); ``prepare_data`` calls it when
  ``build_mini`` is set;
- ``bad_input_kinds``: the kinds of bad input it counts, each marked as skipped (the input never reached the
  model) or not (repaired, padded, masked);
- ``check_root()``, ``read_class_names()`` and ``build_dataset(split)`` for splits ``train``, ``val``, ``test``;
- ``read_input(path)``: one file of the user's (not from the dataset) -> one model input sample, made with the
  test split's reading and transform (``experiments/predict.py --files``); it raises ``UnreadableInputError``
  (a ValueError naming the file and what was expected) for a file it cannot use.

The base provides the rest: the declared-``num_classes`` check, set-up per stage, the DataLoaders, the one
bad-input policy (``report_bad_input``: a warning that names the file, a count shared with the DataLoader
workers, the item dropped by ``collate_skipping_none``; never the end of an epoch) and ``skipped_inputs`` /
``input_counts``, which every run records in results.json.

A batch is ``(inputs, target)``: inputs as the modality's adapter takes them, target int64 class indices (or
float soft labels / forecast values); an all-bad batch comes out with zero rows and the task skips it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class BadInputCounter:
    """Counts of bad inputs by kind, shared with DataLoader worker processes (multiprocessing values).

    ``kinds`` maps each kind to whether an input of that kind is skipped (never reaches the model).
    """

    def __init__(self, kinds: Mapping[str, bool]):
        self.skips = dict(kinds)
        self._values = {kind: multiprocessing.Value("i", 0) for kind in kinds}

    def add(self, kind: str, amount: int = 1) -> None:
        value = self._values[kind]
        with value.get_lock():
            value.value += amount

    def counts(self) -> dict[str, int]:
        return {kind: int(value.value) for kind, value in self._values.items()}

    def skipped(self) -> int:
        return sum(count for kind, count in self.counts().items() if self.skips[kind])


def report_bad_input(
    counter: BadInputCounter | None, kind: str, message: str, category: type[Warning] = UserWarning
) -> None:
    """The one bad-input policy: warn with a message that names the file, and count it under ``kind``."""
    warnings.warn(message, category, stacklevel=3)
    if counter is not None:
        counter.add(kind)


class UnreadableInputError(ValueError):
    """A user's input file (``ModalityDataModule.read_input``) cannot be used; the message names the file."""

    def __init__(self, path: str | os.PathLike, expected: str, reason: str):
        super().__init__(f"{path}: cannot use it: {reason} (expected {expected})")
        self.path, self.expected, self.reason = str(path), expected, reason


def collate_skipping_none(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    """``default_collate`` after dropping the samples a dataset returned as None (skipped inputs).

    A batch whose samples were all skipped comes out empty (zero rows); tasks skip such batches.
    """
    kept = [sample for sample in samples if sample is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return default_collate(kept)


class ModalityDataModule(L.LightningDataModule):
    """Base of every modality's DataModule (see the module docstring for what a subclass supplies).

    Args:
        root: the dataset folder, in the real dataset's layout.
        num_classes: the expected number of classes, checked against the data; None infers it.
        batch_size, eval_batch_size: per-device batch sizes (eval defaults to batch_size).
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        build_mini, mini_seed: build the modality's offline mini dataset at ``root`` (with that seed) in
            ``prepare_data`` when it is not complete there.
    """

    in_chans: int = 3
    mini: ModuleType | None = None
    bad_input_kinds: Mapping[str, bool] = {"unreadable": True}
    # full train batches only (mixup / cutmix pair the samples of a batch; BatchNorm dislikes tiny batches)
    drop_last_train: bool = True

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        build_mini: bool = False,
        mini_seed: int = 0,
    ):
        super().__init__()
        self.root = Path(root)
        self._num_classes = num_classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.build_mini = build_mini
        self.mini_seed = mini_seed
        self.datasets: dict[str, Dataset] = {}
        self._class_names: list[str] | None = None
        self._bad_inputs: BadInputCounter | None = None

    # --- what a modality supplies ----------------------------------------------------------------------

    def check_root(self) -> None:
        """Raise FileNotFoundError, with the expected layout and where to get the dataset, if ``root`` lacks it."""

    def read_class_names(self) -> list[str] | None:
        """Class names in label order (None for a modality without classes)."""
        raise NotImplementedError

    def build_dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` (``train``, ``val`` or ``test``), reporting bad inputs to ``self.bad_inputs``."""
        raise NotImplementedError

    def read_input(self, path: str | os.PathLike) -> Any:
        """One file of the user's -> one model input sample, exactly as the test split reads and transforms its
        files (no label; batch it with ``default_collate([sample])``).

        Raises ``UnreadableInputError`` (a ValueError) naming the file, why, and what was expected, when it
        cannot be used. A modality without single-file inputs keeps this default.
        """
        raise NotImplementedError(f"{type(self).__name__} does not read single input files")

    def collate(self, split: str) -> Callable:
        """The DataLoader's collate function for ``split``."""
        return collate_skipping_none

    def loader_options(self, split: str) -> dict:
        """Extra DataLoader arguments for ``split`` (e.g. a seeded generator)."""
        return {}

    # --- what the task and the harness read ------------------------------------------------------------

    @property
    def class_names(self) -> list[str] | None:
        if self._class_names is None:
            self._class_names = self.read_class_names()
        return self._class_names

    @property
    def num_classes(self) -> int | None:
        if self._num_classes is not None:
            return self._num_classes
        names = self.class_names
        return None if names is None else len(names)

    @property
    def bad_inputs(self) -> BadInputCounter:
        """The shared counter (made on first use, before the DataLoader workers start)."""
        if self._bad_inputs is None:
            self._bad_inputs = BadInputCounter(self.bad_input_kinds)
        return self._bad_inputs

    @property
    def skipped_inputs(self) -> int:
        """Inputs that never reached the model so far: unreadable or missing files (all splits, all workers)."""
        return self.bad_inputs.skipped()

    @property
    def input_counts(self) -> dict[str, int]:
        """Every bad-input count by kind (the skipped ones and the repaired / padded / masked ones)."""
        return self.bad_inputs.counts()

    # --- LightningDataModule hooks ---------------------------------------------------------------------

    def prepare_data(self) -> None:
        if self.build_mini and self.mini is not None:
            self.mini.build_mini(self.root, seed=self.mini_seed)
        self.check_root()

    def setup(self, stage: str | None = None) -> None:
        self.bad_inputs  # noqa: B018  (the counter must exist before workers fork)
        names = self.class_names
        if self._num_classes is not None and names is not None and len(names) != self._num_classes:
            raise ValueError(
                f"{self.root} has {len(names)} classes but data.num_classes is {self._num_classes}; "
                "fix data.num_classes (or set it to null to infer it)"
            )
        for split in STAGE_SPLITS.get(stage, SPLITS):
            if split not in self.datasets:
                self.datasets[split] = self.build_dataset(split)

    def teardown(self, stage: str | None = None) -> None:
        counts = self.input_counts
        if any(counts.values()):  # a warning when inputs were skipped, else (repaired, padded, masked) info
            (log.warning if self.skipped_inputs else log.info)(
                "%s bad inputs after %s: %s", type(self).__name__, stage,
                ", ".join(f"{kind}={count}" for kind, count in counts.items()))

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split``, set up on demand."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return self.datasets[split]

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        drop_last = self.drop_last_train and len(dataset) >= self.batch_size
        return self._loader("train", self.batch_size, shuffle=True, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def _loader(self, split: str, batch_size: int, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=self.collate(split),
            **self.loader_options(split),
        )


__all__ = [
    "BadInputCounter",
    "ModalityDataModule",
    "SPLITS",
    "UnreadableInputError",
    "collate_skipping_none",
    "report_bad_input",
]
