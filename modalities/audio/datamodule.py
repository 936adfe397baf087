"""Speech Commands V2 as a LightningDataModule, read from the real dataset's on-disk layout.

Layout (the one ``torchaudio.datasets.SPEECHCOMMANDS(root)`` reads, and ``build_mini`` writes)::

    <root>/SpeechCommands/speech_commands_v0.02/
        <word>/<speaker>_nohash_<n>.wav      one folder per class (35 words in the full dataset)
        validation_list.txt                  paths relative to speech_commands_v0.02/, e.g. "yes/0a7c2a8d_nohash_0.wav"
        testing_list.txt
        _background_noise_/*.wav             not a class: only used for background-noise augmentation

Training = every word-folder wav not in either list. Classes = the word folders present under the root (sorted),
or the ``classes`` subset given; ``num_classes`` follows.

Batches are ``(inputs, target)``:

- ``inputs``: float32 B x T x F normalized log-mel features (``preprocess.fbank_features``; T = F = 128 by default);
  ``AudioAdapter`` turns them into the B x 1 x T x F map.
- ``target``: ALWAYS a float32 B x num_classes vector, in every split: one-hot for a plain clip, the soft label
  ``lam * onehot_a + (1 - lam) * onehot_b`` for a mixup clip (train only). Take ``argmax`` for accuracy; BCE on it is
  the paper-scale loss. One target type for all splits keeps the task code free of special cases.

Train-only augmentation (val/test items are plain, deterministic features): optional speed perturbation, babble
(other training clips talking at once, at a random SNR; the clip keeps its label), background noise from
``_background_noise_`` at a random SNR, waveform mixup (rate ``mixup``, lambda ~ Beta(mixup_alpha, mixup_alpha)),
SpecAugment masks, small uniform noise and a random time roll, in AST's order. The constructor defaults are the
paper-scale recipe (mixup 0.6, masks 48/48).

Clips are read with soundfile, downmixed, resampled to 16 kHz, zero-padded at the end or centre-cut to 1 s.

Bad files: every listed wav is checked once in ``setup`` (empty, unreadable/non-wav, truncated header, no audio
frames); each bad one is named in a ``BadAudioFileWarning`` and skipped, and they are collected in
``datamodule.skipped_files`` as ``(path, reason)`` (``refused_files``). A file that passes the check but fails
to read later (it changed on disk) is named in a warning and dropped from its batch, as in every modality
(``failed_reads``, counted across DataLoader workers); one bad file never ends an epoch. The DataModule derives
from ``modalities.base.ModalityDataModule``: ``skipped_inputs`` is the total, ``input_counts`` its parts.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Sequence

import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import Dataset

from modalities.base import SPLITS, BadInputCounter, ModalityDataModule, UnreadableInputError, report_bad_input

from . import mini
from .preprocess import (
    FRAME_LENGTH_MS,
    FRAME_SHIFT_MS,
    NORM_MEAN,
    NORM_STD,
    NUM_MEL_BINS,
    SAMPLE_RATE,
    TARGET_LENGTH,
    SpecAugment,
    add_background_noise,
    fbank_features,
    change_speed,
    clip_statistics,
    fix_length,
    jitter_and_roll,
    mix_waveforms,
    normalize_fbank,
    to_mono,
)

# the AST features (``fbank_features`` arguments); ``features`` overrides any of these keys
FEATURE_DEFAULTS = MappingProxyType({
    "num_mel_bins": NUM_MEL_BINS, "target_length": TARGET_LENGTH, "frame_length": FRAME_LENGTH_MS,
    "frame_shift": FRAME_SHIFT_MS, "norm_mean": NORM_MEAN, "norm_std": NORM_STD,
    "clip_norm": False,  # True: each clip normalized by its own mean / std (level-independent features)
})
# the paper-scale train augmentation (the AST recipe); ``augment`` overrides any of these keys
AUGMENT_DEFAULTS = MappingProxyType({
    "freq_mask": 48, "time_mask": 48, "noise_scale": 0.1, "roll_frames": 10, "mixup": 0.6, "mixup_alpha": 10.0,
    "background_noise_prob": 0.0, "background_snr_db": (5.0, 20.0),
    # speaker augmentation (off in the paper recipe): speed perturbation and VTLN warp factor ranges, or null
    "speed": None, "vtln_warp": None,
    # babble (off in the paper recipe): with this probability, 1 to babble_talkers other training clips, each at a
    # random offset, summed and added at a random SNR; the clip keeps its label (the loudest word is the answer)
    "babble_prob": 0.0, "babble_snr_db": (5.0, 20.0), "babble_talkers": 3,
})
# every augmentation off: a dataset's default
NO_AUGMENT = MappingProxyType({**AUGMENT_DEFAULTS, "freq_mask": 0, "time_mask": 0, "noise_scale": 0.0,
                               "roll_frames": 0, "mixup": 0.0})
_MAX_NAMED_WARNINGS = 20  # bad files named one by one; beyond that a single summary warning


def _with_defaults(what: str, defaults: MappingProxyType, given: dict | None) -> dict:
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        raise ValueError(f"unknown audio {what} keys {unknown}; valid keys: {', '.join(defaults)}")
    return {**defaults, **dict(given or {})}


def _factor_range(name: str, value) -> tuple[float, float] | None:
    """``null`` -> None, ``[low, high]`` of positive factors -> a tuple; anything else is refused by name."""
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"augment.{name} must be null or [low, high], got {value!r}") from None
    if not 0 < low <= high:
        raise ValueError(f"augment.{name} must be null or [low, high] with 0 < low <= high, got {value!r}")
    return low, high


def _uniform(low: float, high: float) -> float:
    """A draw from the torch RNG (seeded per DataLoader worker), like the other augmentations."""
    return float(low + (high - low) * torch.rand(()))


class BadAudioFileWarning(UserWarning):
    """A dataset file that cannot be used (named in the message) was skipped."""


def layout_help(root: Path) -> str:
    return (
        f"Expected the Speech Commands V2 layout under root={str(root)!r}:\n"
        f"  {root}/{mini.FOLDER_IN_ARCHIVE}/{mini.DATASET_DIR}/\n"
        "      <word>/<speaker>_nohash_<n>.wav    one folder per word (yes, no, up, down, ...)\n"
        "      validation_list.txt, testing_list.txt   (paths relative to speech_commands_v0.02/)\n"
        "      _background_noise_/*.wav           (optional; noise augmentation only)\n"
        "Get the real dataset from the Speech Commands V2 tarball "
        "(http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz, extracted into "
        f"{root}/{mini.FOLDER_IN_ARCHIVE}/{mini.DATASET_DIR}/), or on a machine with network run "
        "torchaudio.datasets.SPEECHCOMMANDS(root, download=True), which creates exactly this layout. "
        "For the offline mini dataset leave root unset (data/mini/audio) or pass build_mini=True."
    )


def check_layout(root: Path) -> Path:
    """Return ``<root>/SpeechCommands/speech_commands_v0.02`` or raise FileNotFoundError explaining the layout."""
    base = Path(root) / mini.FOLDER_IN_ARCHIVE / mini.DATASET_DIR
    problem = None
    if not base.is_dir():
        problem = f"{base} does not exist"
    else:
        missing = [n for n in ("validation_list.txt", "testing_list.txt") if not (base / n).is_file()]
        if missing:
            problem = f"{base} lacks {', '.join(missing)}"
        elif not word_folders(base):
            problem = f"{base} has no word folders"
    if problem:
        raise FileNotFoundError(f"Speech Commands V2 not found: {problem}.\n{layout_help(Path(root))}")
    return base


def word_folders(base: Path) -> list[str]:
    """Sorted class folder names under ``speech_commands_v0.02`` (``_background_noise_`` and hidden ones excluded)."""
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def read_audio(path: str | os.PathLike) -> tuple[Tensor, int]:
    """Read any soundfile-readable file as a float32 channels-first ``(C, N)`` tensor and its sample rate."""
    data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    return torch.from_numpy(data.T.copy()), int(sample_rate)


def load_clip(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, clip_seconds: float = 1.0) -> Tensor:
    """A 1-D float32 clip: read, downmix, resample to ``sample_rate``, pad/cut to ``clip_seconds``."""
    waveform, rate = read_audio(path)
    return fix_length(to_mono(waveform, rate, sample_rate), int(round(sample_rate * clip_seconds)))


def check_audio_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` is unusable (empty, unreadable, no frames), or None if its header is fine."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises LibsndfileError/RuntimeError for non-audio or broken headers
        return f"unreadable ({type(err).__name__}: {err})"
    if info.frames <= 0:
        return "no audio frames"
    return None


@contextlib.contextmanager
def _one_thread():
    """Run per-clip feature code on one intra-op thread, restoring the previous count afterwards.

    One clip's tensors are tiny: with 2 threads each op pays a thread hand-off (fbank of one clip measured 1.9 ms on
    one thread vs 7.6 ms on two on an idle 2-core machine, 8 ms vs 430 ms on a loaded one). DataLoader workers
    already run on one thread; this matters for ``num_workers=0``, where items are made in the training process.
    """
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


class SpeechCommandsDataset(Dataset):
    """``(fbank T x F, float target of length num_classes)`` items; augmentation only when ``train``."""

    def __init__(
        self,
        files: Sequence[str],
        labels: Sequence[int],
        num_classes: int,
        *,
        train: bool = False,
        sample_rate: int = SAMPLE_RATE,
        clip_seconds: float = 1.0,
        feature_kwargs: dict | None = None,
        augment: dict | None = None,
        background_noises: Sequence[Tensor] = (),
        bad_inputs: BadInputCounter | None = None,
        cache_waveforms: bool = False,
    ) -> None:
        if len(files) != len(labels):
            raise ValueError("files and labels differ in length")
        self.files = [str(f) for f in files]
        self.labels = [int(y) for y in labels]
        self.num_classes = int(num_classes)
        self.train = train
        self.sample_rate = int(sample_rate)
        self.clip_seconds = float(clip_seconds)
        self.feature_kwargs = dict(feature_kwargs or {})
        self.norm_mean = self.feature_kwargs.pop("norm_mean", NORM_MEAN)
        self.norm_std = self.feature_kwargs.pop("norm_std", NORM_STD)
        augment = {**NO_AUGMENT, **dict(augment or {})}
        self.spec_augment = SpecAugment(int(augment["freq_mask"]), int(augment["time_mask"]))
        self.noise_scale = float(augment["noise_scale"])
        self.roll_frames = int(augment["roll_frames"])
        self.mixup = float(augment["mixup"])
        self.mixup_alpha = float(augment["mixup_alpha"])
        self.background_noises = list(background_noises)
        self.background_noise_prob = float(augment["background_noise_prob"])
        low, high = augment["background_snr_db"]
        self.background_snr_db = (float(low), float(high))
        self.speed = _factor_range("speed", augment["speed"])
        self.vtln_warp = _factor_range("vtln_warp", augment["vtln_warp"])
        self.babble_prob = float(augment["babble_prob"])
        low, high = augment["babble_snr_db"]
        self.babble_snr_db = (float(low), float(high))
        self.babble_talkers = int(augment["babble_talkers"])
        if self.babble_prob > 0 and self.babble_talkers < 1:
            raise ValueError(f"augment.babble_talkers must be >= 1 with babble_prob > 0, got {self.babble_talkers}")
        self.bad_inputs = bad_inputs  # shared with the DataLoader workers, or None
        # index -> loaded clip, filled as clips are read (per process: each persistent worker keeps its own)
        self._waveforms: dict[int, Tensor] | None = {} if cache_waveforms else None

    def __len__(self) -> int:
        return len(self.files)

    def one_hot(self, label: int) -> Tensor:
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        target[label] = 1.0
        return target

    def _load(self, index: int) -> Tensor | None:
        if self._waveforms is not None and index in self._waveforms:
            return self._waveforms[index]
        try:
            waveform = load_clip(self.files[index], self.sample_rate, self.clip_seconds)
            if self._waveforms is not None:
                self._waveforms[index] = waveform
            return waveform
        except Exception as err:  # soundfile / resampling errors of a file that changed after the set-up check
            report_bad_input(self.bad_inputs, "failed_reads", f"skipping {self.files[index]}: {type(err).__name__}: "
                             f"{err}", BadAudioFileWarning)
            return None

    def eval_features(self, waveform: Tensor) -> Tensor:
        """The T x F features of a loaded val / test clip (``load_clip``'s output; no augmentation)."""
        return fbank_features(
            waveform, self.sample_rate, norm_mean=self.norm_mean, norm_std=self.norm_std, **self.feature_kwargs
        )

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor] | None:
        with _one_thread():
            return self._item(index)

    def _item(self, index: int) -> tuple[Tensor, Tensor] | None:
        waveform = self._load(index)
        if waveform is None:
            return None  # dropped from its batch by the collate function
        target = self.one_hot(self.labels[index])
        if not self.train:
            return self.eval_features(waveform), target

        if self.speed is not None:  # before the noise: the speaker talks faster / higher, the room does not
            n = waveform.shape[-1]
            waveform = fix_length(change_speed(waveform, self.sample_rate, _uniform(*self.speed)), n)
        if self.babble_prob > 0 and torch.rand(()) < self.babble_prob:
            babble = self._babble(waveform.shape[-1])
            if babble is not None:
                low, high = self.babble_snr_db
                waveform = add_background_noise(waveform, babble, float(low + (high - low) * torch.rand(())))
        if self.background_noises and torch.rand(()) < self.background_noise_prob:
            noise = self.background_noises[int(torch.randint(len(self.background_noises), ()))]
            low, high = self.background_snr_db
            waveform = add_background_noise(waveform, noise, float(low + (high - low) * torch.rand(())))
        if self.mixup > 0 and torch.rand(()) < self.mixup:
            other_index = int(torch.randint(len(self), ()))
            other = self._load(other_index)
            if other is not None:
                lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
                waveform = mix_waveforms(waveform, other, lam)
                target = lam * target + (1.0 - lam) * self.one_hot(self.labels[other_index])
        warp = {} if self.vtln_warp is None else {"vtln_warp": _uniform(*self.vtln_warp)}
        fbank = fbank_features(waveform, self.sample_rate, normalize=False, **self.feature_kwargs, **warp)
        stats = clip_statistics(fbank) if self.feature_kwargs.get("clip_norm") else (self.norm_mean, self.norm_std)
        fbank = self.spec_augment(fbank)  # masks on raw log-mel values, before normalization (AST order)
        fbank = normalize_fbank(fbank, *stats)
        return jitter_and_roll(fbank, self.noise_scale, self.roll_frames), target

    def _babble(self, n: int) -> Tensor | None:
        """Other talkers: 1 to ``babble_talkers`` random training clips, each rolled by a random offset and scaled
        to a random level between 0.3 and 1 of unit RMS, summed (None when no clip could be read).

        Written here: torchaudio has no babble source, and the babble has to be made of this dataset's own speech.
        """
        talkers = []
        for _ in range(int(torch.randint(1, self.babble_talkers + 1, ()))):
            other = self._load(int(torch.randint(len(self), ())))
            if other is None or not torch.any(other):
                continue
            other = fix_length(other, n)
            level = 0.3 + 0.7 * float(torch.rand(()))
            talkers.append(other.roll(int(torch.randint(n, ()))) * level / other.pow(2).mean().sqrt())
        return torch.stack(talkers).sum(0) if talkers else None


class AudioDataModule(ModalityDataModule):
    """Speech Commands V2 (real layout) -> ``(B x T x F features, B x num_classes float targets)`` batches.

    ``root=None`` means the repository's mini dataset (``data/mini/audio``), built by ``prepare_data`` when missing
    (``build_mini=None`` = only for that root; True = build the mini at any root lacking it; False = never).
    Relative roots are resolved against the current directory. ``features`` overrides keys of
    ``FEATURE_DEFAULTS`` (the fbank features of every split), ``augment`` keys of ``AUGMENT_DEFAULTS`` (the
    train-only augmentation).
    ``seed`` seeds the training shuffle and the DataLoader workers' RNG streams; with ``num_workers=0`` the
    augmentation draws from the global torch RNG (seed it, e.g. with ``lightning.seed_everything``).
    Splits ``train`` / ``val`` / ``test`` are the dataset's training set / ``validation_list.txt`` /
    ``testing_list.txt``.
    ``cache_waveforms``: keep every clip in memory once read (decoded, 64 KB per 1-s clip in each DataLoader
    worker; with persistent workers the second epoch reads no file): for mini-sized sets, where reading is a fifth
    of a training item's cost; a file changed on disk after its first read is not noticed.
    """

    in_chans = 1
    mini = mini
    bad_input_kinds = {"refused_files": True, "failed_reads": True}
    drop_last_train = False

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        classes: Sequence[str] | None = None,
        sample_rate: int = SAMPLE_RATE,
        clip_seconds: float = 1.0,
        features: dict | None = None,
        augment: dict | None = None,
        seed: int = 0,
        build_mini: bool | None = None,
        mini_seed: int = 0,
        validate_files: bool = True,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        cache_waveforms: bool = False,
    ) -> None:
        root = Path(root).expanduser().resolve() if root is not None else mini.MINI_ROOT
        if build_mini is None:
            build_mini = root == mini.MINI_ROOT.resolve()
        super().__init__(root, None, int(batch_size), None, int(num_workers), bool(pin_memory),
                         bool(persistent_workers), bool(build_mini), int(mini_seed))
        self._classes = [str(c) for c in classes] if classes is not None else None
        self.sample_rate = int(sample_rate)
        self.clip_seconds = float(clip_seconds)
        self.feature_kwargs = {"target_sample_rate": self.sample_rate,
                               **_with_defaults("feature", FEATURE_DEFAULTS, features)}
        self.augment = _with_defaults("augmentation", AUGMENT_DEFAULTS, augment)
        self.augment["background_snr_db"] = tuple(float(db) for db in self.augment["background_snr_db"])
        for name in ("speed", "vtln_warp"):  # refused here, at construction, not in a DataLoader worker
            self.augment[name] = _factor_range(name, self.augment[name])
        self.seed = int(seed)
        self.validate_files = bool(validate_files)
        self.cache_waveforms = bool(cache_waveforms)

        self.skipped_files: list[tuple[str, str]] = []
        self.split_files: dict[str, list[tuple[str, int]]] = {}
        self._background: list[Tensor] | None = None

    # ------------------------------------------------------------------ what the base asks for

    def check_root(self) -> None:
        check_layout(self.root)

    def read_class_names(self) -> list[str]:
        """Class names in label order (reads the word folders, building the mini if it is due)."""
        self.prepare_data()
        present = word_folders(check_layout(self.root))
        if self._classes is None:
            return present
        missing = [c for c in self._classes if c not in present]
        if missing or len(set(self._classes)) != len(self._classes) or not self._classes:
            raise ValueError(
                f"classes {self._classes} must be distinct word folders of {check_layout(self.root)}; "
                f"missing: {missing}; present: {present}"
            )
        return list(self._classes)

    def build_dataset(self, split: str) -> SpeechCommandsDataset:
        if not self.split_files:
            self._index()
        files = self.split_files[split]
        if not files:
            raise ValueError(f"the {split} split of {self.root} has no usable files for classes {self.class_names}")
        common = self._dataset_options()
        if split != "train":
            return SpeechCommandsDataset([f for f, _ in files], [y for _, y in files], self.num_classes, **common)
        noises = self._background_noises() if self.augment["background_noise_prob"] > 0 else ()
        return SpeechCommandsDataset([f for f, _ in files], [y for _, y in files], self.num_classes, train=True,
                                     augment=self.augment, background_noises=noises, **common)

    def loader_options(self, split: str) -> dict:
        return {"generator": torch.Generator().manual_seed(self.seed)}

    def read_input(self, path: str | os.PathLike) -> Tensor:
        """One audio file (any sample rate, channels and length) -> its T x F features, as the test split makes
        them: downmixed, resampled, padded / centre-cut to ``clip_seconds``, log-mel, normalized."""
        expected = "an audio file soundfile can read, e.g. wav or flac"
        reason = check_audio_file(path) if os.path.exists(path) else "no such file"
        if reason is not None:
            raise UnreadableInputError(path, expected, reason)
        dataset = SpeechCommandsDataset([str(path)], [0], 1, **self._dataset_options())
        try:
            with _one_thread():
                return dataset.eval_features(load_clip(path, self.sample_rate, self.clip_seconds))
        except Exception as err:  # soundfile / resampling errors past the header check
            raise UnreadableInputError(path, expected, f"{type(err).__name__}: {err}") from err

    def _dataset_options(self) -> dict:
        """The SpeechCommandsDataset arguments every split shares (reading and features)."""
        return {
            "sample_rate": self.sample_rate,
            "clip_seconds": self.clip_seconds,
            "feature_kwargs": self.feature_kwargs,
            "bad_inputs": self.bad_inputs,
            "cache_waveforms": self.cache_waveforms,
        }

    # ------------------------------------------------------------------ metadata

    @property
    def feature_shape(self) -> tuple[int, int]:
        """(T, F) of one item's features."""
        return self.feature_kwargs["target_length"], self.feature_kwargs["num_mel_bins"]

    # ------------------------------------------------------------------ helpers

    def _index(self) -> None:
        base = check_layout(self.root)
        names = self.class_names
        label_of = {name: i for i, name in enumerate(names)}
        listed = {}
        for split, filename in (("val", "validation_list.txt"), ("test", "testing_list.txt")):
            for line in (base / filename).read_text().splitlines():
                if line.strip():
                    listed[os.path.normpath(line.strip())] = split
        split_files: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
        bad: list[tuple[str, str]] = []
        for name in names:
            for path in sorted((base / name).glob("*.wav")):
                reason = check_audio_file(path) if self.validate_files else None
                if reason is not None:
                    bad.append((str(path), reason))
                    continue
                split = listed.get(os.path.join(name, path.name), "train")
                split_files[split].append((str(path), label_of[name]))
        self._refuse(bad)
        self.split_files = split_files

    def _refuse(self, bad: list[tuple[str, str]]) -> None:
        """Name (the first ones one by one), record and count files refused by the set-up check."""
        for path, reason in bad[:_MAX_NAMED_WARNINGS]:
            warnings.warn(f"skipping {path}: {reason}", BadAudioFileWarning, stacklevel=3)
        if len(bad) > _MAX_NAMED_WARNINGS:
            more = len(bad) - _MAX_NAMED_WARNINGS
            message = f"... and {more} more bad files skipped (see datamodule.skipped_files)"
            warnings.warn(message, BadAudioFileWarning, stacklevel=3)
        self.skipped_files.extend(bad)
        if bad:
            self.bad_inputs.add("refused_files", len(bad))

    def _background_noises(self) -> list[Tensor]:
        if self._background is None:
            self._background = []
            folder = self.root / mini.FOLDER_IN_ARCHIVE / mini.DATASET_DIR / mini.BACKGROUND_DIR
            bad = []
            for path in sorted(folder.glob("*.wav")) if folder.is_dir() else []:
                reason = check_audio_file(path)
                if reason is None:
                    try:
                        waveform, rate = read_audio(path)
                        self._background.append(to_mono(waveform, rate, self.sample_rate))
                    except Exception as err:
                        reason = f"unreadable ({type(err).__name__}: {err})"
                if reason is not None:
                    bad.append((str(path), reason))
            self._refuse(bad)
        return self._background
