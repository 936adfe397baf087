"""Tests of the audio features (AST fbank recipe), the train-time transforms and the spectrogram adapter."""

import math

import pytest
import torch
import torchaudio

from modalities.audio import AudioAdapter, fbank_features
from modalities.audio.preprocess import (
    NORM_MEAN,
    NORM_STD,
    SpecAugment,
    add_background_noise,
    change_speed,
    fix_length,
    jitter_and_roll,
    kaldi_log_mel,
    mix_waveforms,
    normalize_fbank,
)


def sine(freq: float = 440.0, sample_rate: int = 16000, seconds: float = 1.0, amplitude: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(sample_rate * seconds), dtype=torch.float64) / sample_rate
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


def chirp(sample_rate: int, seconds: float = 1.0) -> torch.Tensor:
    """A 200 Hz -> 3 kHz sweep plus a tone: content in many mel bands, all well below 8 kHz."""
    t = torch.arange(int(sample_rate * seconds), dtype=torch.float64) / sample_rate
    sweep = torch.sin(2 * math.pi * (200 * t + 1400 * t**2))
    return (0.3 * sweep + 0.1 * torch.sin(2 * math.pi * 700 * t)).float()


def test_fbank_shape_dtype_and_padding():
    feats = fbank_features(sine(), 16000)
    assert feats.shape == (128, 128) and feats.dtype == torch.float32
    # 1 s gives 98 Kaldi frames; frames 98..127 are zero-padded raw values, i.e. (0 - mean) / (2 std) normalized.
    pad_value = (0.0 - NORM_MEAN) / (2 * NORM_STD)
    assert torch.allclose(feats[98:], torch.full((30, 128), pad_value))
    assert not torch.allclose(feats[97], torch.full((128,), pad_value))


def test_fbank_matches_the_recipe_computed_directly():
    wave = sine() + 0.05  # a DC offset: the recipe removes the mean first
    direct = torchaudio.compliance.kaldi.fbank(
        (wave - wave.mean()).unsqueeze(0),
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
        frame_length=25,
    )
    assert direct.shape == (98, 128)
    direct = torch.nn.functional.pad(direct, (0, 0, 0, 30))
    direct = (direct - (-6.845978)) / (2 * 5.5654526)
    torch.testing.assert_close(fbank_features(wave, 16000), direct, rtol=0, atol=1e-6)
    # The 440 Hz tone sits in one mel band: the loudest bin of a middle frame is at 440 Hz on the mel scale.
    mel = lambda f: 1127 * math.log(1 + f / 700)  # noqa: E731
    expected_bin = (mel(440) - mel(20)) / ((mel(8000) - mel(20)) / 129) - 1
    assert abs(int(direct[50].argmax()) - expected_bin) <= 1


def test_normalization_and_parameters():
    wave = chirp(16000)
    raw = fbank_features(wave, 16000, normalize=False)
    torch.testing.assert_close(fbank_features(wave, 16000), (raw - NORM_MEAN) / (2 * NORM_STD))
    torch.testing.assert_close(normalize_fbank(raw, 1.0, 2.0), (raw - 1.0) / 4.0)
    assert fbank_features(wave, 16000, num_mel_bins=64, target_length=50).shape == (50, 64)
    # Longer clips are cut to target_length frames (the first ones), shorter ones padded.
    long = fbank_features(torch.cat([wave, wave]), 16000)
    torch.testing.assert_close(long[:90], fbank_features(wave, 16000)[:90], rtol=0, atol=1e-3)
    assert fbank_features(torch.zeros(100), 16000).shape == (128, 128)  # shorter than one window: no crash


def test_resampling_gives_the_same_features():
    at_16k = fbank_features(chirp(16000), 16000)
    for rate in (44100, 22050, 48000):
        other = fbank_features(chirp(rate), rate)
        assert other.shape == (128, 128)
        # The resampling error stays far below the feature scale (std ~ 0.6); the largest differences are in the
        # top bands, where the signal has no content and both versions hold only numerical noise (-80 dB).
        assert (other - at_16k)[:98].abs().mean() < 0.02, rate
        assert (other - at_16k)[:98, :80].abs().max() < 0.05, rate  # bins below ~4 kHz
    assert (fbank_features(chirp(44100), 44100, target_sample_rate=44100) - at_16k).abs().mean() > 0.05


def test_stereo_is_downmixed():
    left, right = chirp(16000), sine(1000)
    stereo = torch.stack([left, right])  # (C, N), channels first
    torch.testing.assert_close(fbank_features(stereo, 16000), fbank_features((left + right) / 2, 16000))
    torch.testing.assert_close(fbank_features(torch.stack([left, left]), 16000), fbank_features(left, 16000))
    with pytest.raises(ValueError, match=r"\(N,\) or \(C, N\)"):
        fbank_features(torch.zeros(1, 2, 16000), 16000)


def test_fix_length_pads_at_end_and_cuts_the_centre():
    x = torch.arange(10.0)
    assert fix_length(x, 12).tolist() == list(range(10)) + [0, 0]
    assert fix_length(x, 4).tolist() == [3.0, 4.0, 5.0, 6.0]


def test_mixup_and_background_noise():
    a, b = sine(440) + 1.0, sine(1000)
    torch.testing.assert_close(mix_waveforms(a, b, 1.0), a - a.mean())
    mixed = mix_waveforms(a, b, 0.3)
    torch.testing.assert_close(mixed, 0.3 * (a - a.mean()) + 0.7 * b - (0.7 * b).mean(), rtol=0, atol=1e-6)
    noise = torch.randn(40000)
    noisy = add_background_noise(a - a.mean(), noise, snr_db=10.0)
    snr = 10 * torch.log10((a - a.mean()).pow(2).mean() / (noisy - (a - a.mean())).pow(2).mean())
    assert abs(float(snr) - 10.0) < 1e-3


def dominant_frequency(x: torch.Tensor, sample_rate: int = 16000) -> float:
    spectrum = torch.fft.rfft(x.double()).abs()
    return float(torch.fft.rfftfreq(x.numel(), 1.0 / sample_rate)[spectrum.argmax()])


@pytest.mark.parametrize("warp", [1.0, 0.9, 0.955, 1.1])
def test_cached_mel_bank_fbank_equals_kaldi_fbank(warp):
    """kaldi_log_mel (mel bank cached per warp factor) gives torchaudio's kaldi.fbank, digital silence included."""
    torch.manual_seed(0)
    wave = chirp(16000) + 0.01 * torch.randn(16000)
    wave[12000:] = 0.0  # a zero-padded tail: log of the energy floor in both
    for bins in (64, 128):
        reference = torchaudio.compliance.kaldi.fbank(
            wave.unsqueeze(0), htk_compat=True, sample_frequency=16000.0, use_energy=False, window_type="hanning",
            num_mel_bins=bins, dither=0.0, frame_shift=10.0, frame_length=25.0, vtln_warp=warp,
        )
        torch.testing.assert_close(kaldi_log_mel(wave, 16000.0, bins, vtln_warp=warp), reference, rtol=0, atol=1e-5)
    # warp factors are rounded to 0.005 (a few dozen cached banks): 0.9513 reads as 0.95
    torch.testing.assert_close(kaldi_log_mel(wave, 16000.0, 64, vtln_warp=0.9513),
                               kaldi_log_mel(wave, 16000.0, 64, vtln_warp=0.95), rtol=0, atol=0)
    assert not torch.equal(kaldi_log_mel(wave, 16000.0, 64, vtln_warp=0.96), kaldi_log_mel(wave, 16000.0, 64, vtln_warp=0.95))


def test_speed_perturbation_equals_torchaudio_speed():
    wave = chirp(16000)
    for factor in (0.9, 0.93, 1.07, 1.1):
        reference = torchaudio.functional.speed(wave, 16000, factor)[0]
        torch.testing.assert_close(change_speed(wave, 16000, factor), reference, rtol=0, atol=1e-5)


def test_speed_perturbation_changes_tempo_and_pitch_together():
    x = sine(1000.0)
    assert change_speed(x, 16000, 1.0) is x and change_speed(x, 16000, 1.004) is x  # rounded to 0.01
    faster = change_speed(x, 16000, 1.25)
    assert abs(faster.numel() - 12800) <= 1  # 1 s played 1.25x faster lasts 0.8 s ...
    assert abs(dominant_frequency(faster) - 1250.0) < 5.0  # ... and every frequency is 1.25x higher
    slower = change_speed(x, 16000, 0.8)
    assert abs(slower.numel() - 20000) <= 1 and abs(dominant_frequency(slower) - 800.0) < 5.0


def test_vtln_warp_moves_a_tone_across_mel_bins():
    tone = sine(1500.0)
    peak = lambda f: int(f.mean(dim=0).argmax())  # noqa: E731 (the mel bin of the tone)
    plain = fbank_features(tone, 16000)
    assert torch.equal(fbank_features(tone, 16000, vtln_warp=1.0), plain)
    down, up = fbank_features(tone, 16000, vtln_warp=0.85), fbank_features(tone, 16000, vtln_warp=1.15)
    # Kaldi warps the filter bank: the tone reads as if it were at about 0.85x / 1.15x its frequency
    assert peak(down) < peak(plain) - 2 and peak(up) > peak(plain) + 2


def test_clip_norm_makes_features_level_independent():
    torch.manual_seed(0)
    x = chirp(16000) + 0.01 * torch.randn(16000)  # a noise floor in every band, as in any recording
    mini = dict(num_mel_bins=64, target_length=100)
    loud, quiet = fbank_features(x, 16000, clip_norm=True, **mini), fbank_features(0.05 * x, 16000, clip_norm=True,
                                                                                      **mini)
    plain_loud, plain_quiet = fbank_features(x, 16000, **mini), fbank_features(0.05 * x, 16000, **mini)
    # a gain is a constant log offset, removed by the clip's own mean; only the few mel bands narrower than an FFT
    # bin (always at kaldi's log floor, whatever the level) keep a trace of it
    assert (loud - quiet).abs().mean() < 0.05 * (plain_loud - plain_quiet).abs().mean()
    assert abs(float(loud.mean())) < 1e-4 and abs(float(loud.std()) - 0.5) < 0.02  # the AST "/ (2 std)" form
    padded = fbank_features(x[:8000], 16000, clip_norm=True, **mini)  # 0.5 s: padded frames sit at the mean
    assert torch.allclose(padded[60:], padded[60:].mean().expand(40, 64)) and torch.isfinite(padded).all()
    assert torch.isfinite(fbank_features(torch.zeros(16000), 16000, clip_norm=True)).all()


def test_spec_augment_masks_and_roll():
    torch.manual_seed(0)
    feats = torch.ones(128, 128)
    masked = SpecAugment(48, 48)(feats)
    zero_rows = (masked == 0).all(dim=1).sum()  # fully masked time frames
    zero_cols = (masked == 0).all(dim=0).sum()  # fully masked mel bins
    assert 0 < zero_rows <= 48 or 0 < zero_cols <= 48
    assert torch.equal(SpecAugment(0, 0)(feats), feats)
    ramp = torch.arange(128.0).unsqueeze(1).expand(128, 4)
    rolled = jitter_and_roll(ramp, noise_scale=0.0, roll_frames=10)
    shift = int((rolled[0, 0] - ramp[0, 0]).item()) % 128
    assert min(shift, 128 - shift) <= 10 and torch.equal(rolled, torch.roll(ramp, -shift, 0))
    jittered = jitter_and_roll(torch.zeros(128, 128), noise_scale=0.1, roll_frames=0)
    assert jittered.min() >= 0 and jittered.max() <= 0.1


def test_spectrogram_adapter():
    adapter = AudioAdapter()
    assert adapter.out_chans == 1
    x = torch.randn(2, 128, 128)
    assert adapter(x).shape == (2, 1, 128, 128)
    torch.testing.assert_close(adapter(x)[:, 0], x)
    y = torch.randn(2, 1, 128, 64)
    assert adapter(y) is y
    for bad in (torch.randn(2, 3, 128, 128), torch.randn(128, 128), torch.randn(1, 1, 1, 8, 8)):
        with pytest.raises(ValueError, match="B x T x F or B x 1 x T x F"):
            adapter(bad)
