"""Tests of the Speech Commands DataModule: real layout, splits, targets, train-only augmentation, bad inputs."""

import gc
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from modalities.audio import AudioDataModule, build_mini, fbank_features
from modalities.audio.datamodule import BadAudioFileWarning, load_clip
from modalities.audio.mini import MINI_ROOT

SMALL = dict(words=("yes", "no", "up"), num_speakers=8, clips_per_speaker=2, num_val_variants=2, num_test_variants=2)
NO_AUGMENT = dict(augment=dict(mixup=0.0, freq_mask=0, time_mask=0, noise_scale=0.0, roll_frames=0))


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory) -> Path:
    return build_mini(tmp_path_factory.mktemp("audio") / "mini", seed=0, **SMALL)


@pytest.fixture
def copied_root(mini_root, tmp_path) -> Path:
    """A private copy of the small mini (tests that add bad files must not touch the shared one)."""
    shutil.copytree(mini_root, tmp_path / "copy")
    return tmp_path / "copy"


def base_of(root: Path) -> Path:
    return root / "SpeechCommands" / "speech_commands_v0.02"


def speaker(path: str) -> str:
    return Path(path).name.split("_nohash_")[0]


def test_classes_splits_and_metadata(mini_root):
    dm = AudioDataModule(root=mini_root, batch_size=4)
    assert dm.class_names == ["no", "up", "yes"] and dm.num_classes == 3 and dm.in_chans == 1
    dm.setup()
    sizes = {split: len(files) for split, files in dm.split_files.items()}
    assert sizes == {"train": 24, "val": 12, "test": 12}
    speakers = {split: {speaker(f) for f, _ in files} for split, files in dm.split_files.items()}
    assert not (speakers["train"] & speakers["val"]) and not (speakers["train"] & speakers["test"])
    assert not (speakers["val"] & speakers["test"])
    # Same split as torchaudio's reader of the layout.
    listed = torchaudio.datasets.SPEECHCOMMANDS(root=str(mini_root), subset="testing")
    assert sorted(Path(listed.get_metadata(i)[0]).as_posix() for i in range(len(listed))) == sorted(
        Path(f).relative_to(mini_root / "SpeechCommands").as_posix() for f, _ in dm.split_files["test"]
    )
    for path, label in dm.split_files["val"]:
        assert Path(path).parent.name == dm.class_names[label]
    assert dm.skipped_files == []


def test_class_subset(mini_root):
    dm = AudioDataModule(root=mini_root, classes=["yes", "up"])
    assert dm.class_names == ["yes", "up"] and dm.num_classes == 2
    dm.setup("fit")
    assert {Path(f).parent.name for f, _ in dm.split_files["train"]} == {"yes", "up"}
    x, y = dm.dataset("val")[0]
    assert y.shape == (2,)
    with pytest.raises(ValueError, match="missing: \\['stop'\\]"):
        AudioDataModule(root=mini_root, classes=["yes", "stop"]).class_names


def test_batches_have_the_contract_shapes(mini_root):
    dm = AudioDataModule(root=mini_root, batch_size=5, num_workers=0)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (5, 128, 128) and x.dtype == torch.float32
    assert y.shape == (5, 3) and y.dtype == torch.float32
    torch.testing.assert_close(y.sum(1), torch.ones(5))
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (5, 128, 128) and ((y == 0) | (y == 1)).all() and (y.sum(1) == 1).all()


def test_workers_are_persistent_and_produce_the_same_items(mini_root):
    dm = AudioDataModule(root=mini_root, batch_size=6, num_workers=2)
    dm.setup("validate")
    loader = dm.val_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    batches = list(loader)
    x, y = batches[0]
    plain = AudioDataModule(root=mini_root, batch_size=6)
    plain.setup("validate")
    x0, y0 = next(iter(plain.val_dataloader()))
    torch.testing.assert_close(x, x0)
    torch.testing.assert_close(y, y0)
    # Shut the persistent workers down here: left to the cyclic GC during a later test, torch's worker shutdown
    # waits out its 5 s join timeout per worker.
    del loader, batches
    gc.collect()


def test_augmentation_is_train_only(mini_root):
    torch.manual_seed(0)
    dm = AudioDataModule(root=mini_root, augment={"mixup": 0.6})  # paper-scale augmentation otherwise
    dm.setup()
    val = dm.dataset("val")
    path, label = dm.split_files["val"][3]
    x, y = val[3]
    torch.testing.assert_close(x, fbank_features(load_clip(path), 16000), rtol=0, atol=0)
    assert torch.equal(val[3][0], x) and int(y.argmax()) == label
    test_x, _ = dm.dataset("test")[0]
    torch.testing.assert_close(test_x, fbank_features(load_clip(dm.split_files["test"][0][0]), 16000))

    train = dm.dataset("train")
    path, label = dm.split_files["train"][2]
    plain = fbank_features(load_clip(path), 16000)
    draws = [train[2][0] for _ in range(3)]
    assert all((d - plain).abs().mean() > 0.01 for d in draws)
    assert not torch.equal(draws[0], draws[1])
    # With every augmentation switched off, a training item is the plain features too.
    quiet = AudioDataModule(root=mini_root, **NO_AUGMENT)
    torch.testing.assert_close(quiet.dataset("train")[2][0], plain, rtol=0, atol=0)


def test_speaker_augmentation_options(mini_root):
    """speed / vtln_warp: off by default, [low, high] draws per item (train only), bad ranges refused by name."""
    torch.manual_seed(0)
    dm = AudioDataModule(root=mini_root, augment={**NO_AUGMENT["augment"], "speed": [0.8, 1.2],
                                                  "vtln_warp": (0.85, 1.15)})
    assert dm.augment["speed"] == (0.8, 1.2) and AudioDataModule(root=mini_root).augment["speed"] is None
    train = dm.dataset("train")
    path, _ = dm.split_files["train"][1]
    plain = fbank_features(load_clip(path), 16000)
    draws = [train[1][0] for _ in range(3)]
    assert all(d.shape == plain.shape and (d - plain).abs().mean() > 0.01 for d in draws)
    assert not torch.equal(draws[0], draws[1])
    torch.testing.assert_close(dm.dataset("val")[1][0], fbank_features(load_clip(dm.split_files["val"][1][0]),
                                                                         16000), rtol=0, atol=0)
    for bad in ([1.2, 0.8], [0.0, 1.0], 1.1, ["a", "b"]):
        with pytest.raises(ValueError, match=r"augment.speed must be null or \[low, high\]"):
            AudioDataModule(root=mini_root, augment={"speed": bad})


def test_clip_norm_in_every_split(mini_root):
    dm = AudioDataModule(root=mini_root, features={"clip_norm": True}, augment={"freq_mask": 8, "mixup": 0.0})
    dm.setup()
    path, _ = dm.split_files["val"][0]
    val = dm.dataset("val")[0][0]
    torch.testing.assert_close(val, fbank_features(load_clip(path), 16000, clip_norm=True), rtol=0, atol=0)
    assert abs(float(val.mean())) < 1e-4  # the clip's own statistics, not the dataset's
    train = dm.dataset("train")[0][0]
    assert torch.isfinite(train).all() and train.shape == val.shape


def test_mixup_soft_labels(mini_root):
    torch.manual_seed(1)
    dm = AudioDataModule(root=mini_root, batch_size=24, augment={**NO_AUGMENT["augment"], "mixup": 1.0})
    dm.setup("fit")
    _, y = next(iter(dm.train_dataloader()))
    torch.testing.assert_close(y.sum(1), torch.ones(len(y)))
    assert ((y >= 0) & (y <= 1)).all()
    mixed = (y > 0).sum(1) == 2  # partner of another class: two non-zero entries lam, 1 - lam
    assert mixed.sum() >= 5
    lam = y[mixed].max(1).values
    assert ((lam > 0.5) & (lam < 0.95)).all()  # Beta(10, 10) is concentrated around 0.5


def test_bad_inputs_are_skipped_or_handled(copied_root):
    base = base_of(copied_root)
    good = sorted((base / "yes").glob("*.wav"))[0]
    (base / "yes" / "empty0000_nohash_0.wav").write_bytes(b"")
    (base / "yes" / "trunchead_nohash_0.wav").write_bytes(good.read_bytes()[:30])
    (base / "no" / "notawav00_nohash_0.wav").write_text("this is a text file, not audio\n")
    # Readable but odd: data cut mid-way (shorter clip), and a stereo 44.1 kHz 1.5 s recording.
    (base / "no" / "truncdata_nohash_0.wav").write_bytes(good.read_bytes()[:10000])
    clip, _ = sf.read(str(good), dtype="float32")
    at_44k = torchaudio.functional.resample(torch.from_numpy(clip), 16000, 44100).numpy()
    quarter = np.zeros(44100 // 4, dtype=np.float32)
    long_stereo = np.stack([np.concatenate([quarter, at_44k, quarter])] * 2, axis=1)  # (N, 2)
    sf.write(str(base / "up" / "stereo441_nohash_0.wav"), long_stereo, 44100)

    dm = AudioDataModule(root=copied_root, **NO_AUGMENT)
    with pytest.warns(BadAudioFileWarning) as record:
        dm.setup()
    messages = " ".join(str(w.message) for w in record)
    for name in ("empty0000", "trunchead", "notawav00"):
        assert name in messages
    assert "truncdata" not in messages and "stereo441" not in messages
    assert len(dm.skipped_files) == 3 and dm.skipped_inputs == 3
    assert {Path(p).name.split("_")[0] for p, _ in dm.skipped_files} == {"empty0000", "trunchead", "notawav00"}
    reasons = dict((Path(p).name.split("_")[0], r) for p, r in dm.skipped_files)
    assert reasons["empty0000"] == "empty file" and reasons["notawav00"].startswith("unreadable")

    train = dm.dataset("train")
    names = [Path(f).name for f in train.files]
    stereo_x, stereo_y = train[names.index("stereo441_nohash_0.wav")]
    assert stereo_x.shape == (128, 128) and int(stereo_y.argmax()) == dm.class_names.index("up")
    # Downmixed, resampled to 16 kHz and centre-cut to 1 s: the same features as the original clip.
    assert (stereo_x - fbank_features(torch.from_numpy(clip), 16000)).abs().mean() < 0.02
    short_x, _ = train[names.index("truncdata_nohash_0.wav")]
    assert short_x.shape == (128, 128)

    # The whole epoch runs.
    loader = AudioDataModule(root=copied_root, batch_size=8, **NO_AUGMENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadAudioFileWarning)
        loader.setup("fit")
    assert sum(len(x) for x, _ in loader.train_dataloader()) == 24 + 2


def test_file_broken_after_setup_is_named_dropped_and_counted(copied_root):
    dm = AudioDataModule(root=copied_root, batch_size=4)
    dm.setup("validate")
    val = dm.dataset("val")
    Path(val.files[3]).write_text("garbage")
    with pytest.warns(BadAudioFileWarning, match=re.escape(Path(val.files[3]).name)):
        assert val[3] is None
    assert dm.skipped_inputs == 1 and dm.input_counts == {"refused_files": 0, "failed_reads": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadAudioFileWarning)
        dm.num_workers = 2
        batches = list(dm.val_dataloader())  # the epoch runs to its end without the broken file
    assert sum(len(x) for x, _ in batches) == len(val) - 1 and [len(x) for x, _ in batches][0] == 3
    assert dm.skipped_inputs == 2  # a failure inside a worker process is counted too


def test_wrong_layout_fails_fast_with_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        AudioDataModule(root=tmp_path / "nowhere").setup()
    message = str(err.value)
    needles = ["speech_commands_v0.02", "<word>/<speaker>_nohash_<n>.wav", "validation_list.txt"]
    needles += ["SPEECHCOMMANDS(root, download=True)", "speech_commands_v0.02.tar.gz"]
    for needle in needles:
        assert needle in message
    words_only = base_of(tmp_path / "nolists") / "yes"
    words_only.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="lacks validation_list.txt, testing_list.txt"):
        AudioDataModule(root=tmp_path / "nolists").num_classes


def test_constructor_takes_plain_values_and_mini_root_logic(mini_root):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"root": str(mini_root), "classes": ["no", "yes"],
                            "augment": {"background_snr_db": [0, 10]}})
    dm = AudioDataModule(**cfg)
    assert dm.class_names == ["no", "yes"] and dm.augment["background_snr_db"] == (0.0, 10.0)
    assert dm.batch_size == 32
    with pytest.raises(ValueError, match="unknown audio augmentation keys \\['freq_masks'\\]"):
        AudioDataModule(root=mini_root, augment={"freq_masks": 4})
    assert AudioDataModule().build_mini and AudioDataModule().root == MINI_ROOT
    assert not AudioDataModule(root=mini_root).build_mini
    assert AudioDataModule(root=mini_root, build_mini=True).build_mini


def test_background_noise_mixing(mini_root):
    torch.manual_seed(0)
    dm = AudioDataModule(root=mini_root, augment={**NO_AUGMENT["augment"], "background_noise_prob": 1.0})
    train = dm.dataset("train")
    assert len(train.background_noises) == 5
    plain = fbank_features(load_clip(train.files[0]), 16000)
    assert (train[0][0] - plain).abs().mean() > 0.01


@pytest.mark.slow
def test_prepare_data_builds_the_default_mini(tmp_path):
    dm = AudioDataModule(root=tmp_path, build_mini=True)
    dm.prepare_data()
    assert dm.num_classes == 10
    dm.setup()
    speakers = {split: {speaker(f) for f, _ in files} for split, files in dm.split_files.items()}
    assert [len(speakers[s]) for s in ("train", "val", "test")] == [44, 8, 8]
    assert [len(dm.split_files[s]) for s in ("train", "val", "test")] == [880, 160, 160]


def test_babble_adds_other_training_talkers_and_keeps_the_label(mini_root):
    torch.manual_seed(0)
    augment = {**NO_AUGMENT["augment"], "babble_prob": 1.0, "babble_snr_db": [0.0, 0.0], "babble_talkers": 2}
    train = AudioDataModule(root=mini_root, augment=augment).dataset("train")
    clip = load_clip(train.files[0])
    babble = train._babble(clip.shape[-1])
    assert babble.shape == clip.shape and babble.pow(2).mean() > 0
    # each talker is a training clip rolled in time at 0.3 - 1 of unit RMS: 1 or 2 of them sum to <= 2 x unit RMS
    assert 0.3**2 / 2 < float(babble.pow(2).mean()) <= 4.0
    plain = fbank_features(clip, 16000)
    features, target = train[0]
    assert (features - plain).abs().mean() > 0.01  # at 0 dB the other talkers are as loud as the word
    assert torch.equal(target, train.one_hot(train.labels[0]))  # the word spoken loudest keeps its label
    quiet = AudioDataModule(root=mini_root, augment={**augment, "babble_snr_db": [80.0, 80.0]}).dataset("train")
    assert (quiet[0][0] - plain).abs().mean() < 1e-4  # 80 dB down: the plain features (but for silent frames)
    with pytest.raises(ValueError, match="augment.babble_talkers must be >= 1"):
        AudioDataModule(root=mini_root, augment={**augment, "babble_talkers": 0}).dataset("train")
    with pytest.raises(ValueError, match=r"unknown audio augmentation keys \[.babel_prob.\]; valid keys: .*babble_prob"):
        AudioDataModule(root=mini_root, augment={"babel_prob": 0.5})


def test_cached_waveforms_are_read_once(copied_root):
    train = AudioDataModule(root=copied_root, cache_waveforms=True, **NO_AUGMENT).dataset("train")
    uncached = AudioDataModule(root=copied_root, **NO_AUGMENT).dataset("train")
    first = train[3][0]
    Path(train.files[3]).unlink()  # a cached clip is not read again
    torch.testing.assert_close(train[3][0], first, rtol=0, atol=0)
    with pytest.warns(BadAudioFileWarning, match="skipping .*: "):
        assert uncached[3] is None  # without the cache the missing file is named and skipped
