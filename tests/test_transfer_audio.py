"""The unseen-voices check set (experiments/transfer/audio_voices.py): its layout, its voices and its refusal to
overwrite."""

import numpy as np
import pytest
import soundfile as sf

from experiments.transfer.audio_voices import build
from modalities.audio import AudioDataModule
from modalities.audio.mini import RESERVED_VARIANTS, VOICE_VARIANTS


@pytest.fixture(scope="module")
def check_root(tmp_path_factory):
    return build(tmp_path_factory.mktemp("unseen") / "set", speakers_per_variant=1, words=("yes", "no"))


def test_layout_is_read_as_a_test_split(check_root):
    base = check_root / "SpeechCommands" / "speech_commands_v0.02"
    lines = [line for line in (base / "testing_list.txt").read_text().splitlines() if line]
    assert len(lines) == 2 * len(RESERVED_VARIANTS) and all((base / line).is_file() for line in lines)
    dm = AudioDataModule(root=check_root, build_mini=False)
    dm.setup("test")
    assert dm.class_names == ["no", "yes"] and len(dm.dataset("test")) == len(lines)
    x, y = dm.dataset("test")[0]
    assert x.shape == (128, 128) and y.sum() == 1
    clip, rate = sf.read(base / lines[0])
    assert rate == 16000 and clip.shape == (16000,) and np.abs(clip).max() > 0.01


def test_voices_are_never_in_the_mini_set(check_root):
    assert not set(RESERVED_VARIANTS) & set(VOICE_VARIANTS)
    readme = (check_root / "SpeechCommands" / "speech_commands_v0.02" / "README.md").read_text()
    assert all(v in readme for v in RESERVED_VARIANTS)


def test_refuses_a_non_empty_folder(check_root):
    with pytest.raises(FileExistsError, match="not empty"):
        build(check_root, speakers_per_variant=1, words=("yes",))
