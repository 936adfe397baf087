"""Speech Commands-layout test set spoken by voices the mini set never uses: does a mini audio model transfer?

::

    python -m experiments.transfer.audio_voices /tmp/unseen_voices            # 14 voices x 4 speakers x 10 words
    python experiments/predict.py runs/audio/unireplknet_test/<time> --override data.root=/tmp/unseen_voices

The voices are espeak-ng's ``RESERVED_VARIANTS`` (``modalities.audio.mini``), which the mini builder leaves out of
every split, each with random English accents, pitches and rates. Everything after synthesis is done differently
from the mini builder, so that the check does not share its post-processing either: the word is placed anywhere
in the second (not near the centre), its level is set by RMS (not by peak), and the background is one of three
kinds the mini set does not generate (silence with a little dither, a babble of other words by other reserved
voices saying Speech Commands words that are not classes, like the real dataset's "unknown" words;
band-passed noise), at its own SNR range. Every clip is in ``testing_list.txt``; the training and
validation splits are empty, which is enough for ``experiments/predict.py --split test``.

Only the synthesis engine is shared (``modalities.audio.mini._Espeak``, a thin ctypes handle): there is no other
offline speech synthesizer to draw from.
"""

from __future__ import annotations

import argparse
import multiprocessing
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from modalities.audio.mini import (
    ACCENTS,
    DATASET_DIR,
    DEFAULT_WORDS,
    FOLDER_IN_ARCHIVE,
    RESERVED_VARIANTS,
    SAMPLE_RATE,
    SPEECH_COMMANDS_WORDS,
)

BACKGROUNDS = ("dither", "babble", "band_noise")


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2) + 1e-12))


def _trim(x: np.ndarray) -> np.ndarray:
    """Drop the leading and trailing samples quieter than 1% of the peak (espeak pads its output with silence)."""
    loud = np.flatnonzero(np.abs(x) > 0.01 * (np.abs(x).max() + 1e-12))
    return x[loud[0] : loud[-1] + 1] if loud.size else x


def _speaker(variant: str, index: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, zlib.crc32(variant.encode()), index])
    return {
        "voice": f"{ACCENTS[int(rng.integers(len(ACCENTS)))]}+{variant}",
        "pitch": int(rng.integers(10, 91)),
        "pitch_range": int(rng.integers(10, 91)),
        "rate": int(rng.integers(110, 211)),
        "id": f"{zlib.crc32(f'{variant}|{index}|{seed}'.encode()):08x}",
    }


def _synthesize_all(task: dict) -> list[tuple[str, str, np.ndarray]]:
    """Worker: every (word, speaker) utterance of one variant as float 16 kHz waveforms, trimmed."""
    from modalities.audio.mini import _espeak

    torch.set_num_threads(1)
    engine = _espeak()
    out = []
    for speaker in task["speakers"]:
        for word in task["words"] + task["babble_words"]:
            pcm = engine.synthesize(word, speaker["voice"], speaker["rate"], speaker["pitch"], speaker["pitch_range"],
                                    seed=zlib.crc32(f"{word}|{speaker['id']}".encode()))
            wave = torchaudio.functional.resample(torch.from_numpy(pcm.astype(np.float32) / 32768.0),
                                                  engine.sample_rate, SAMPLE_RATE).numpy().astype(np.float64)
            out.append((word, speaker["id"], _trim(wave)))
    return out


def _background(kind: str, rng: np.random.Generator, n: int, others: list[np.ndarray]) -> np.ndarray:
    if kind == "dither":
        return rng.standard_normal(n) * 1e-3
    if kind == "babble":  # three other utterances at random places and levels
        out = np.zeros(n)
        for k in rng.choice(len(others), size=3, replace=False):
            w = others[int(k)][:n] * rng.uniform(0.3, 1.0) / max(_rms(others[int(k)]), 1e-9)
            start = int(rng.integers(0, n - len(w) + 1))
            out[start : start + len(w)] += w
        return out
    # band-passed white noise: a random 300-3000 Hz band through a biquad (torchaudio's), speech-like in colour
    centre = float(rng.uniform(300.0, 3000.0))
    noise = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    return torchaudio.functional.bandpass_biquad(noise, SAMPLE_RATE, centre, Q=0.7).numpy().astype(np.float64)


def build(out: str | Path, *, speakers_per_variant: int = 4, words=DEFAULT_WORDS, seed: int = 0,
          snr_db: tuple[float, float] = (5.0, 25.0), workers: int = 2) -> Path:
    """Write the check set under ``out`` (Speech Commands layout) and return ``out``."""
    out = Path(out)
    base = out / FOLDER_IN_ARCHIVE / DATASET_DIR
    if base.exists() and any(base.iterdir()):
        raise FileExistsError(f"{base} is not empty; choose a new folder")
    babble_words = [w for w in SPEECH_COMMANDS_WORDS if w not in words][:10]
    tasks = [{"words": list(words), "babble_words": babble_words,
              "speakers": [_speaker(v, i, seed) for i in range(speakers_per_variant)]} for v in RESERVED_VARIANTS]
    with multiprocessing.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
        spoken = [u for chunk in pool.map(_synthesize_all, tasks, chunksize=1) for u in chunk]
    utterances = [u for u in spoken if u[0] in words]
    babble = [u[2] for u in spoken if u[0] not in words]
    rng = np.random.default_rng([seed, 7])
    n = SAMPLE_RATE
    lines = []
    for word in words:
        (base / word).mkdir(parents=True, exist_ok=True)
    for i, (word, speaker_id, wave) in enumerate(utterances):
        wave = wave[:n]
        clip = np.zeros(n)
        start = int(rng.integers(0, n - len(wave) + 1))
        clip[start : start + len(wave)] = wave / max(_rms(wave), 1e-9) * 10 ** (rng.uniform(-35.0, -15.0) / 20.0)
        kind = BACKGROUNDS[i % len(BACKGROUNDS)]
        noise = _background(kind, rng, n, [babble[int(k)] for k in rng.choice(len(babble), 8, replace=False)])
        if kind != "dither":  # scaled to a random SNR against the word's own RMS
            speech_rms = _rms(clip[start : start + len(wave)])
            noise *= speech_rms / max(_rms(noise), 1e-12) * 10 ** (-rng.uniform(*snr_db) / 20.0)
        clip = np.clip(clip + noise, -1.0, 1.0)
        name = f"{speaker_id}_nohash_0.wav"
        sf.write(base / word / name, np.round(clip * 32767).astype(np.int16), SAMPLE_RATE, subtype="PCM_16")
        lines.append(f"{word}/{name}")
    (base / "testing_list.txt").write_text("".join(f"{line}\n" for line in sorted(lines)))
    (base / "validation_list.txt").write_text("")
    (base / "README.md").write_text(
        f"Unseen-voices check set (experiments/transfer/audio_voices.py, seed {seed}): espeak-ng variants "
        f"{', '.join(RESERVED_VARIANTS)} x {speakers_per_variant} speakers x {len(words)} words, all in testing.\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder (a Speech Commands root)")
    parser.add_argument("--speakers-per-variant", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = build(args.out, speakers_per_variant=args.speakers_per_variant, seed=args.seed)
    print(f"wrote {root}: {len(RESERVED_VARIANTS)} voices x {args.speakers_per_variant} speakers x "
          f"{len(DEFAULT_WORDS)} words")


if __name__ == "__main__":
    main()
