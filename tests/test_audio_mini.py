"""Tests of the offline mini Speech Commands builder: real layout, speaker-disjoint splits, determinism, no-op."""

import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torchaudio

from modalities.audio import build_mini
from modalities.audio.mini import (
    BACKGROUND_DIR,
    MANIFEST,
    RESERVED_VARIANTS,
    VOICE_VARIANTS,
    _voiced_span,
    is_complete,
    make_speakers,
    split_speakers,
)

SMALL = dict(words=("yes", "no", "up"), num_speakers=8, clips_per_speaker=2, num_val_variants=2, num_test_variants=2)
NAME = re.compile(r"^([0-9a-f]{8})_nohash_(\d+)\.wav$")


@pytest.fixture(scope="module")
def small_mini(tmp_path_factory) -> Path:
    return build_mini(tmp_path_factory.mktemp("audio") / "mini", seed=0, **SMALL)


def base_of(root: Path) -> Path:
    return root / "SpeechCommands" / "speech_commands_v0.02"


def read_list(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def test_layout_and_file_format(small_mini):
    base = base_of(small_mini)
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == [BACKGROUND_DIR, "no", "up", "yes"]
    assert (base / "validation_list.txt").is_file() and (base / "testing_list.txt").is_file()
    for word in SMALL["words"]:
        files = sorted((base / word).glob("*.wav"))
        assert len(files) == SMALL["num_speakers"] * SMALL["clips_per_speaker"]
        assert all(NAME.match(f.name) for f in files)
        assert len({NAME.match(f.name).group(1) for f in files}) == SMALL["num_speakers"]
    clip = base / "yes" / sorted((base / "yes").glob("*.wav"))[0].name
    info = sf.info(str(clip))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
    noises = sorted((base / BACKGROUND_DIR).glob("*.wav"))
    assert len(noises) >= 3 and all(sf.info(str(n)).frames >= 16000 * 5 for n in noises)


def test_clips_hold_speech_above_the_noise(small_mini):
    base = base_of(small_mini)
    for path in sorted((base / "no").glob("*.wav"))[:6]:
        x, _ = sf.read(str(path), dtype="float32")
        start, stop = _voiced_span(x, threshold=0.2)
        assert 0.1 < (stop - start) / 16000 < 1.0  # a word, not the whole clip
        loud = np.mean(x[start:stop] ** 2)
        quiet = np.mean(np.concatenate([x[: max(start - 800, 1)], x[stop + 800 :]]) ** 2)
        assert 10 * np.log10(loud / quiet) > 6  # speech stands out of the background noise
    a, _ = sf.read(str(sorted((base / "yes").glob("*.wav"))[0]))
    b, _ = sf.read(str(sorted((base / "no").glob("*.wav"))[0]))
    assert not np.allclose(a, b)


def test_splits_are_speaker_and_variant_disjoint(small_mini):
    base = base_of(small_mini)
    speaker = lambda line: NAME.match(line.split("/")[1]).group(1)  # noqa: E731
    val = read_list(base / "validation_list.txt")
    test = read_list(base / "testing_list.txt")
    everything = [f"{p.parent.name}/{p.name}" for p in base.glob("*/*.wav") if p.parent.name != BACKGROUND_DIR]
    train = sorted(set(everything) - set(val) - set(test))
    per_clip = len(SMALL["words"]) * SMALL["clips_per_speaker"]
    assert len(val) == 2 * per_clip and len(test) == 2 * per_clip and len(train) == 4 * per_clip
    groups = [{speaker(x) for x in split} for split in (train, val, test)]
    assert groups[0].isdisjoint(groups[1]) and groups[0].isdisjoint(groups[2]) and groups[1].isdisjoint(groups[2])
    # whole voice variants are held out: the README lists each speaker's variant and split
    variant_of = dict(re.findall(r"- ([0-9a-f]{8}): \w+, \{'accent': '[^']*', 'variant': '([^']*)'",
                                 (base / "README.md").read_text()))
    held = [{variant_of[s] for s in group} for group in groups]
    assert len(variant_of) == SMALL["num_speakers"] and held[0].isdisjoint(held[1] | held[2])
    assert all((base / line).is_file() for line in val + test)


def test_torchaudio_speechcommands_lists_it(small_mini):
    base = base_of(small_mini)
    test = torchaudio.datasets.SPEECHCOMMANDS(root=str(small_mini), subset="testing")
    assert len(test) == len(read_list(base / "testing_list.txt"))
    path, rate, label, speaker, n = test.get_metadata(0)
    assert rate == 16000 and label in SMALL["words"] and n in (0, 1)
    assert (small_mini / "SpeechCommands" / path).is_file() and NAME.match(Path(path).name).group(1) == speaker
    subsets = ("training", "validation", "testing")
    sizes = [len(torchaudio.datasets.SPEECHCOMMANDS(root=str(small_mini), subset=s)) for s in subsets]
    assert sizes == [24, 12, 12]
    assert len(torchaudio.datasets.SPEECHCOMMANDS(root=str(small_mini))) == 48  # _background_noise_ excluded


def test_deterministic_and_noop(small_mini, tmp_path):
    again = build_mini(tmp_path / "again", seed=0, **SMALL)
    files = sorted(p.relative_to(base_of(small_mini)) for p in base_of(small_mini).rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(base_of(again)) for p in base_of(again).rglob("*") if p.is_file())
    for rel in files:
        assert (base_of(small_mini) / rel).read_bytes() == (base_of(again) / rel).read_bytes(), rel
    marker = base_of(again) / MANIFEST
    stamp = marker.stat().st_mtime_ns
    start = time.perf_counter()
    assert build_mini(tmp_path / "again", seed=0, **SMALL) == tmp_path / "again"
    assert time.perf_counter() - start < 0.5 and marker.stat().st_mtime_ns == stamp
    assert is_complete(tmp_path / "again", seed=0) and not is_complete(tmp_path / "again", seed=1)
    assert not is_complete(tmp_path / "nothing")


def test_other_seed_rebuilds_and_foreign_folders_are_protected(small_mini, tmp_path):
    other = build_mini(tmp_path / "m", seed=1, **SMALL)
    assert read_list(base_of(other) / "testing_list.txt") != read_list(base_of(small_mini) / "testing_list.txt")
    foreign = base_of(tmp_path / "real")
    foreign.mkdir(parents=True)
    (foreign / "validation_list.txt").write_text("yes/0a7c2a8d_nohash_0.wav\n")
    with pytest.raises(FileExistsError, match="not built by build_mini"):
        build_mini(tmp_path / "real", **SMALL)
    assert (foreign / "validation_list.txt").is_file()
    with pytest.raises(ValueError, match="Speech Commands V2 words"):
        build_mini(tmp_path / "x", words=("yes", "hello"))


def test_default_speakers_and_split():
    """The default mini: 3 speakers per voice variant; 6 validation and 12 test variants held out whole."""
    speakers = make_speakers(258, seed=0)
    assert len({s.id for s in speakers}) == 258 and {s.variant for s in speakers} == set(VOICE_VARIANTS)
    assert make_speakers(12, seed=0) == speakers[:12]
    split = split_speakers(speakers, num_val=6, num_test=12, seed=0)
    variants = {name: {s.variant for s in speakers if split[s.id] == name} for name in ("training", "validation",
                                                                                            "testing")}
    assert [len(variants[name]) for name in ("training", "validation", "testing")] == [68, 6, 12]
    assert variants["training"].isdisjoint(variants["validation"] | variants["testing"])
    assert variants["validation"].isdisjoint(variants["testing"])
    assert sum(v == "testing" for v in split.values()) == 36
    assert not set(RESERVED_VARIANTS) & set(VOICE_VARIANTS)  # the independent check's voices are never used
    assert split_speakers(speakers, 6, 12, seed=1) != split
    with pytest.raises(ValueError, match="voice variants"):
        split_speakers(speakers[:4], 2, 2)
