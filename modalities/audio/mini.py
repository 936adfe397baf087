"""Deterministic builder of the offline mini Speech Commands V2, in the real dataset's on-disk layout.

``build_mini(root)`` writes ``<root>/SpeechCommands/speech_commands_v0.02/<word>/<speaker>_nohash_<n>.wav`` (1 s,
16 kHz, mono, int16), ``validation_list.txt`` / ``testing_list.txt`` (split by speaker, like the real dataset) and a
``_background_noise_`` folder of generated noises, so ``torchaudio.datasets.SPEECHCOMMANDS(root)`` and
``AudioDataModule(root)`` read it exactly like the real data.

The speech is real synthesized speech: espeak-ng through the ``espeakng-loader`` wheel (shared library and voice
data, no system package), driven through ctypes. A synthetic speaker is an (English accent, voice variant, pitch,
pitch range, speaking rate) combination; its id is 8 hex characters of a hash of those parameters. Each speaker says
every word ``clips_per_speaker`` times at different rates; every clip gets a random placement (anywhere the word
fits), level and background noise at a random SNR. The default set: 86 espeak voice variants x 3 speakers x 2 clips
of 10 words; validation and test hold out 6 and 12 whole voice variants (the test split measures voices never heard
in training), and 14 more variants (``RESERVED_VARIANTS``) are never used, left for independent checks.

Determinism: espeak-ng keeps internal synthesis state between utterances (the same call returns slightly different
audio the second time in a process), so each word is synthesized in a fresh forked worker process, in a fixed
order; the noise sources of breathy voices (espeak's generator and libc ``rand``) are seeded per utterance, and
everything random on the Python side comes from numpy generators seeded by ``(seed, word, speaker, clip)``. The same
arguments therefore give the same bytes, whatever the number of workers. The espeak library is process-global: it
is initialized once per worker process (``_espeak()`` caches the handle) and never in the calling process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import multiprocessing
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio

from modalities.mini_build import MANIFEST, build_atomically, manifest_matches

# The mini root the DataModule builds automatically: data/mini/audio in the repository (editable install).
MINI_ROOT = Path(__file__).resolve().parents[2] / "data" / "mini" / "audio"
FOLDER_IN_ARCHIVE = "SpeechCommands"
DATASET_DIR = "speech_commands_v0.02"
BACKGROUND_DIR = "_background_noise_"

SPEECH_COMMANDS_WORDS = (
    "backward bed bird cat dog down eight five follow forward four go happy house learn left marvin nine no off "
    "on one right seven sheila six stop three tree two up visual wow yes zero"
).split()
DEFAULT_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")

# Voice variants (espeak-ng-data/voices/!v of the pinned espeakng-loader: 104 in all). The mini set draws its
# speakers from VOICE_VARIANTS and holds out whole variants for validation and testing, so its test split measures
# voices never heard in training. RESERVED_VARIANTS are never used by the mini set at all: they are left for the
# independent check experiments/transfer/audio_voices.py. A few variants are left out of both: "fast" (a test
# setting, not a voice), "Mr serious" (a space in its name) and two that barely speak ("Demonic", "croak").
RESERVED_VARIANTS = tuple(
    "Alicia Gene2 Jacky Mario Storm aunty edward2 grandpa iven3 klatt5 m8 f5 steph3 zac".split()
)
VOICE_VARIANTS = tuple(
    "Alex Andrea Andy Annie AnxiousAndy Denis Diogo Gene Henrique Hugo Lee Marco Michael Mike "
    "Nguyen Reed RicishayMax RicishayMax2 RicishayMax3 Tweaky UniRobot adam anika anikaRobot "
    "announcer antonio belinda benjamin boris caleb david ed edward f1 f2 f3 f4 grandma gustave ian iven "
    "iven2 iven4 john kaukovalta klatt klatt2 klatt3 klatt4 klatt6 linda m1 m2 m3 m4 m5 m6 m7 marcelo max "
    "michel miguel mike2 norbert pablo paul pedro quincy rob robert robosoft robosoft2 robosoft3 robosoft4 "
    "robosoft5 robosoft6 robosoft7 robosoft8 sandro shelby steph steph2 travis victor whisper whisperf".split()
)
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd")

SAMPLE_RATE = 16000
CLIP_SECONDS = 1.0
NOISE_SECONDS = 10.0


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: espeak voice ``<accent>+<variant>``, pitch and pitch range (0-99), base rate (wpm)."""

    accent: str
    variant: str
    pitch: int
    pitch_range: int
    rate: int

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"

    @property
    def id(self) -> str:
        key = f"{self.voice}|{self.pitch}|{self.pitch_range}|{self.rate}"
        return hashlib.sha1(key.encode()).hexdigest()[:8]


def make_speakers(num_speakers: int, seed: int = 0, variants: Sequence[str] = VOICE_VARIANTS) -> list[Speaker]:
    """``num_speakers`` distinct speakers; variants cycle so each is used about equally, the rest is random.

    The first k speakers do not depend on ``num_speakers``.
    """
    rng = np.random.default_rng([seed, 1])
    speakers: list[Speaker] = []
    seen: set[str] = set()
    while len(speakers) < num_speakers:
        speaker = Speaker(
            accent=ACCENTS[int(rng.integers(len(ACCENTS)))],
            variant=variants[len(speakers) % len(variants)],
            pitch=int(rng.integers(15, 86)),
            pitch_range=int(rng.integers(10, 91)),
            rate=int(rng.integers(120, 201)),
        )
        if speaker.id not in seen:  # a hash collision (or a repeated draw) just draws again
            seen.add(speaker.id)
            speakers.append(speaker)
    return speakers


def split_speakers(speakers: Sequence[Speaker], num_val: int, num_test: int, seed: int = 0) -> dict[str, str]:
    """Speaker id -> ``"training" | "validation" | "testing"``, split by whole voice VARIANT.

    ``num_val`` / ``num_test`` variants (drawn in a seeded order among those the speakers use) are held out with
    all their speakers: validation and test measure voices never heard in training, as the real dataset's
    speaker split does for people.
    """
    variants = sorted({s.variant for s in speakers})
    if num_val + num_test >= len(variants):
        raise ValueError(f"{num_val} validation + {num_test} test voice variants leave none of the speakers' "
                         f"{len(variants)} variants to train")
    order = [variants[int(i)] for i in np.random.default_rng([seed, 2]).permutation(len(variants))]
    subset = {v: "testing" for v in order[:num_test]}
    subset.update({v: "validation" for v in order[num_test : num_test + num_val]})
    return {s.id: subset.get(s.variant, "training") for s in speakers}


# ----------------------------------------------------------------------------------------------------------------
# espeak-ng through ctypes (runs in worker processes only)


class _Espeak:
    """A ctypes handle on libespeak-ng in synchronous mode, collecting int16 samples through the synth callback."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        # espeak_Synth(text, size, position, position_type, end_position, flags, unique_identifier, user_data)
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int]
        lib.espeak_Synth.argtypes += [ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        # 2 = AUDIO_OUTPUT_SYNCHRONOUS: espeak_Synth returns when all audio went through the callback.
        self.sample_rate = lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate})")
        self._chunks: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # keep a reference: the C library holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        # Voices with breath noise draw from both espeak's own generator and libc's rand(); seed both per utterance.
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"))

    def _collect(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int = 0) -> np.ndarray:
        """int16 samples at ``self.sample_rate`` (22,050 Hz); ``seed`` seeds the noise sources of breathy voices."""
        self._lib.espeak_ng_SetRandSeed(int(seed))
        self._libc.srand(int(seed) & 0xFFFFFFFF)
        status = self._lib.espeak_SetVoiceByName(voice.encode())
        if status != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r} (status {status})")
        for parameter, value in ((1, rate), (3, pitch), (4, pitch_range)):  # espeakRATE, espeakPITCH, espeakRANGE
            self._lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks = []
        data = text.encode()
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 0, None, None)
        self._lib.espeak_Synchronize()
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed for {text!r} with {voice!r} (status {status})")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


@functools.lru_cache(maxsize=1)
def _espeak() -> _Espeak:
    return _Espeak()


# ----------------------------------------------------------------------------------------------------------------
# noise and clip post-processing


def _shaped_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit peak.

    Hand-written: an FFT-domain 1/f^(exponent/2) amplitude shaping; neither torchaudio nor numpy ships coloured noise.
    """
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n)
    noise -= noise.mean()
    return noise / np.abs(noise).max()


def _background_noises(seed: int, sample_rate: int = SAMPLE_RATE, seconds: float = NOISE_SECONDS) -> dict:
    """The generated ``_background_noise_`` files: name -> float waveform in [-1, 1]."""
    rng = np.random.default_rng([seed, 3])
    n = int(sample_rate * seconds)
    t = np.arange(n) / sample_rate
    hum = sum(np.sin(2 * np.pi * 50.0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3, 5))
    hum = hum + 0.05 * rng.standard_normal(n)
    # A running tap: band-limited noise (a smoothed white noise, i.e. a crude low-pass) with a slow flutter.
    tap = np.convolve(rng.standard_normal(n), np.ones(4) / 4, mode="same") * (1 + 0.3 * np.sin(2 * np.pi * 3.0 * t))
    noises = {
        "white_noise": _shaped_noise(rng, n, 0.0),
        "pink_noise": _shaped_noise(rng, n, 1.0),
        "brown_noise": _shaped_noise(rng, n, 2.0),
        "mains_hum": hum / np.abs(hum).max(),
        "running_tap": tap / np.abs(tap).max(),
    }
    return {name: 0.5 * x for name, x in noises.items()}


def _voiced_span(x: np.ndarray, threshold: float = 0.02) -> tuple[int, int]:
    """First and one-past-last sample whose magnitude exceeds ``threshold`` x the peak (espeak pads silence)."""
    loud = np.flatnonzero(np.abs(x) > threshold * max(np.abs(x).max(), 1e-9))
    if loud.size == 0:
        return 0, len(x)
    return int(loud[0]), int(loud[-1]) + 1


def _make_clip(
    speech: np.ndarray, resample: torch.nn.Module, noises: list[np.ndarray], rng: np.random.Generator, snr_db: tuple
) -> np.ndarray:
    """espeak int16 output -> a 1 s 16 kHz int16 clip: resample, trim, place, set level, add noise at a random SNR."""
    x = resample(torch.from_numpy(speech.astype(np.float32) / 32768.0)).numpy().astype(np.float64)
    start, stop = _voiced_span(x)
    margin = int(0.02 * SAMPLE_RATE)
    x = x[max(start - margin, 0) : stop + margin]
    n = int(SAMPLE_RATE * CLIP_SECONDS)
    if len(x) > n:  # only very slow rates exceed 1 s; keep the centre like the DataModule does
        cut = (len(x) - n) // 2
        x = x[cut : cut + n]
    clip = np.zeros(n)
    offset = int(rng.integers(0, n - len(x) + 1))  # anywhere the word fits, as in recorded clips
    clip[offset : offset + len(x)] = x
    clip *= 10.0 ** (rng.uniform(-30.0, -3.0) / 20.0) / max(np.abs(clip).max(), 1e-9)  # peak level in dBFS
    noise = noises[int(rng.integers(len(noises)))]
    begin = int(rng.integers(0, len(noise) - n + 1))
    segment = noise[begin : begin + n]
    speech_power = np.mean(clip[offset : offset + len(x)] ** 2)
    scale = np.sqrt(speech_power / (np.mean(segment**2) * 10.0 ** (rng.uniform(*snr_db) / 10.0)))
    clip = clip + scale * segment
    return np.clip(np.round(clip * 32767.0), -32768, 32767).astype(np.int16)


def _build_word(task: dict) -> list[str]:
    """Worker entry point: synthesize, post-process and write every clip of one word; return the file names.

    Runs in a fresh forked process: espeak's carried-over state is then the same on every build, and torch is set
    to one thread (as DataLoader workers do), which also makes the resampling independent of the machine.
    """
    torch.set_num_threads(1)
    engine = _espeak()
    resample = torchaudio.transforms.Resample(engine.sample_rate, SAMPLE_RATE)
    noises = list(_background_noises(task["seed"]).values())
    word, seed, folder = task["word"], task["seed"], Path(task["folder"])
    names = []
    for speaker in task["speakers"]:
        for n, offset in enumerate(task["rate_offsets"]):
            key = f"{seed}|{word}|{speaker.id}|{n}"
            speech = engine.synthesize(
                word, speaker.voice, speaker.rate + offset, speaker.pitch, speaker.pitch_range, zlib.crc32(key.encode())
            )
            rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
            clip = _make_clip(speech, resample, noises, rng, task["snr_db"])
            name = f"{speaker.id}_nohash_{n}.wav"
            sf.write(folder / name, clip, SAMPLE_RATE, subtype="PCM_16")
            names.append(name)
    return names


# ----------------------------------------------------------------------------------------------------------------
# the builder


def _params(seed, words, num_speakers, clips_per_speaker, num_val_variants, num_test_variants, snr_db) -> dict:
    return {
        "seed": int(seed),
        "words": list(words),
        "num_speakers": int(num_speakers),
        "clips_per_speaker": int(clips_per_speaker),
        "num_val_variants": int(num_val_variants),
        "num_test_variants": int(num_test_variants),
        "snr_db": [float(snr_db[0]), float(snr_db[1])],
        "format": 4,  # bump when the recipe changes so old builds are replaced
    }


def _built_here(folder: Path) -> bool:
    """Whether ``folder`` holds a build of this module (its manifest, or the marker of builds before it had one),
    which a rebuild may replace."""
    return (folder / MANIFEST).is_file() or (folder / ".mini_complete.json").is_file()


def is_complete(root: str | os.PathLike, seed: int | None = None) -> bool:
    """True if ``root`` holds a finished mini build (built with ``seed``, if given)."""
    target = Path(root) / FOLDER_IN_ARCHIVE / DATASET_DIR
    return manifest_matches(target) if seed is None else manifest_matches(target, seed=int(seed))


def build_mini(
    root: str | os.PathLike = MINI_ROOT,
    seed: int = 0,
    force: bool = False,
    *,
    words: Sequence[str] = DEFAULT_WORDS,
    num_speakers: int = 258,
    clips_per_speaker: int = 2,
    num_val_variants: int = 6,
    num_test_variants: int = 12,
    snr_db: Sequence[float] = (5.0, 30.0),
    workers: int | None = None,
) -> Path:
    """Build the mini Speech Commands V2 under ``root`` and return ``root``.

    Does nothing if a finished build with the same parameters is there (unless ``force``); replaces an older mini
    build with other parameters; refuses to touch a ``speech_commands_v0.02`` folder it did not build (e.g. the
    real dataset). The build happens in a temporary sibling folder renamed into place at the end, so an interrupted
    build leaves no half dataset behind. ``workers`` forked synthesis processes (default: up to 2).
    """
    root = Path(root)
    words = list(words)
    unknown = [w for w in words if w not in SPEECH_COMMANDS_WORDS]
    if unknown or not words or len(set(words)) != len(words):
        raise ValueError(f"words must be distinct Speech Commands V2 words, got {words} (unknown: {unknown})")
    if clips_per_speaker < 1:
        raise ValueError("clips_per_speaker must be >= 1")
    params = _params(seed, words, num_speakers, clips_per_speaker, num_val_variants, num_test_variants, snr_db)
    archive = root / FOLDER_IN_ARCHIVE
    target = archive / DATASET_DIR
    if not force and manifest_matches(target, params=params):
        return root
    if target.exists() and not _built_here(target) and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and was not built by build_mini; refusing to overwrite it")

    speakers = make_speakers(num_speakers, seed)
    split = split_speakers(speakers, num_val_variants, num_test_variants, seed)
    # The clips of one speaker differ in speaking rate (wpm), spread over +-25 around the speaker's rate.
    spread = np.linspace(-25, 25, clips_per_speaker) if clips_per_speaker > 1 else np.zeros(1)
    rate_offsets = [int(x) for x in np.rint(spread)]

    def write(tmp: Path) -> dict:
        noises = _background_noises(seed)
        (tmp / BACKGROUND_DIR).mkdir()
        for name, noise in noises.items():
            pcm = np.round(noise * 32767.0).astype(np.int16)
            sf.write(tmp / BACKGROUND_DIR / f"{name}.wav", pcm, SAMPLE_RATE, subtype="PCM_16")
        # One task per word, each in a fresh process (maxtasksperchild=1): see _build_word.
        tasks = []
        for word in words:
            (tmp / word).mkdir()
            tasks.append(
                {
                    "word": word,
                    "seed": int(seed),
                    "folder": str(tmp / word),
                    "speakers": speakers,
                    "rate_offsets": rate_offsets,
                    "snr_db": tuple(params["snr_db"]),
                }
            )
        with multiprocessing.get_context("fork").Pool(workers or min(2, os.cpu_count() or 1),
                                                      maxtasksperchild=1) as pool:
            written = pool.map(_build_word, tasks, chunksize=1)

        lists: dict[str, list[str]] = {"validation": [], "testing": []}
        for word, names in zip(words, written):
            for name in names:
                subset = split[name.split("_nohash_")[0]]
                if subset in lists:
                    lists[subset].append(f"{word}/{name}")
        for subset, filename in (("validation", "validation_list.txt"), ("testing", "testing_list.txt")):
            (tmp / filename).write_text("".join(f"{line}\n" for line in sorted(lists[subset])))
        (tmp / "README.md").write_text(
            "Mini Speech Commands V2 (synthetic): espeak-ng speech, built by modalities.audio.mini.build_mini.\n"
            f"{len(words)} words x {num_speakers} speakers x {clips_per_speaker} clips; speakers and their split:\n\n"
            + "".join(f"- {s.id}: {split[s.id]}, {asdict(s)}\n" for s in speakers)
        )
        return {"seed": int(seed), "params": params}

    build_atomically(target, write, lambda path: manifest_matches(path, params=params), force)
    return root
