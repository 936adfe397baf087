"""Audio preprocessing: waveform -> normalized log-mel filterbank (the AST recipe) and the train-time augmentations.

Everything here is a pure function (or a small transform) on tensors; reading files lives in ``datamodule.py``.

The feature recipe is the one AST uses and the UniRepLKNet audio code reuses (paper Sec. 4, modalities.md):
subtract the waveform mean, Kaldi fbank (htk_compat, no energy, hanning window, 128 mel bins, 25 ms / 10 ms,
dither 0), zero-pad or cut to 128 frames, then ``(x - mean) / (2 * std)`` with AST's dataset statistics (the
factor 2 is part of the recipe). A 1 s clip at 16 kHz gives 98 frames, padded to 128.

Augmentations (train only, see ``datamodule.SpeechCommandsDataset``): waveform mixup, SpecAugment
frequency/time masks, small uniform noise on the normalized features and a random time roll, plus optional
background-noise mixing at a random SNR. They draw from torch's global RNG so DataLoader workers, which torch seeds
one by one, get independent streams.
"""

from __future__ import annotations

import functools
import math

import torch
import torchaudio
from torch import Tensor

SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
TARGET_LENGTH = 128
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
# AST's Speech Commands V2 statistics of the raw log-mel features.
NORM_MEAN = -6.845978
NORM_STD = 5.5654526


def to_mono(waveform: Tensor, sample_rate: int, target_sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Return a 1-D float32 waveform at ``target_sample_rate``.

    Accepts a 1-D tensor ``(N,)`` or a channels-first ``(C, N)`` tensor (torchaudio's convention); channels are
    averaged (downmix), other sample rates are resampled with ``torchaudio.functional.resample``.
    """
    waveform = torch.as_tensor(waveform)
    if waveform.dim() == 2:
        waveform = waveform.mean(dim=0)
    elif waveform.dim() != 1:
        raise ValueError(f"expected a waveform of shape (N,) or (C, N), got {tuple(waveform.shape)}")
    waveform = waveform.to(torch.float32)
    if int(sample_rate) != int(target_sample_rate):
        waveform = torchaudio.functional.resample(waveform, int(sample_rate), int(target_sample_rate))
    return waveform


def fix_length(waveform: Tensor, num_samples: int) -> Tensor:
    """Zero-pad (at the end) or cut (keeping the centre) a 1-D waveform to exactly ``num_samples``.

    Padding at the end matches how short Speech Commands clips are recorded (the word starts the clip);
    a centre cut keeps the word of a longer clip, which is usually in its middle.
    """
    n = waveform.shape[-1]
    if n < num_samples:
        return torch.nn.functional.pad(waveform, (0, num_samples - n))
    start = (n - num_samples) // 2
    return waveform[..., start : start + num_samples]


def normalize_fbank(fbank: Tensor, norm_mean: float = NORM_MEAN, norm_std: float = NORM_STD) -> Tensor:
    """AST normalization ``(x - mean) / (2 * std)`` (twice the std, as in the recipe)."""
    return (fbank - norm_mean) / (2.0 * norm_std)


def fbank_features(
    waveform: Tensor,
    sample_rate: int,
    *,
    target_sample_rate: int = SAMPLE_RATE,
    num_mel_bins: int = NUM_MEL_BINS,
    target_length: int = TARGET_LENGTH,
    frame_length: float = FRAME_LENGTH_MS,
    frame_shift: float = FRAME_SHIFT_MS,
    window_type: str = "hanning",
    dither: float = 0.0,
    htk_compat: bool = True,
    use_energy: bool = False,
    norm_mean: float = NORM_MEAN,
    norm_std: float = NORM_STD,
    normalize: bool = True,
    vtln_warp: float = 1.0,
    clip_norm: bool = False,
) -> Tensor:
    """AST log-mel features of one clip: a float32 tensor of shape ``(target_length, num_mel_bins)``.

    ``waveform`` is ``(N,)`` or ``(C, N)`` at ``sample_rate``; it is downmixed and resampled to
    ``target_sample_rate`` first. With ``normalize=False`` the raw log-mel values are returned (the train
    pipeline masks before normalizing, as AST does).
    """
    wave = to_mono(waveform, sample_rate, target_sample_rate)
    wave = wave - wave.mean() if wave.numel() else wave
    # kaldi.fbank cannot frame a signal shorter than one window; pad such a clip with silence to one window.
    window = int(round(target_sample_rate * frame_length / 1000.0))
    if wave.numel() < window:
        wave = torch.nn.functional.pad(wave, (0, window - wave.numel()))
    if window_type == "hanning" and dither == 0.0 and not use_energy:
        fbank = kaldi_log_mel(wave, float(target_sample_rate), num_mel_bins, frame_length, frame_shift, vtln_warp)
    else:
        fbank = torchaudio.compliance.kaldi.fbank(
            wave.unsqueeze(0),
            htk_compat=htk_compat,
            sample_frequency=float(target_sample_rate),
            use_energy=use_energy,
            window_type=window_type,
            num_mel_bins=num_mel_bins,
            dither=dither,
            frame_shift=frame_shift,
            frame_length=frame_length,
            vtln_warp=float(vtln_warp),
        )
    n_frames = fbank.shape[0]
    if n_frames < target_length:  # AST pads log-mel zeros; under clip_norm the clip's mean (level-neutral)
        pad_value = float(fbank.mean()) if clip_norm and n_frames else 0.0
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, target_length - n_frames), value=pad_value)
    else:
        fbank = fbank[:target_length]
    if normalize:
        fbank = normalize_fbank(fbank, *(clip_statistics(fbank) if clip_norm else (norm_mean, norm_std)))
    return fbank


# VTLN warp factors are rounded to this step, so a training run meets a few dozen mel banks, each built once
VTLN_WARP_STEP = 0.005


@functools.lru_cache(maxsize=256)
def _mel_bank(num_mel_bins: int, padded_window: int, sample_rate: float, vtln_warp: float) -> Tensor:
    """torchaudio's Kaldi mel bank (fbank's defaults: 20 Hz to Nyquist, VTLN knees 100 / -500 Hz) with fbank's
    zero column for the Nyquist bin: num_mel_bins x (padded_window // 2 + 1)."""
    bank, _ = torchaudio.compliance.kaldi.get_mel_banks(
        num_mel_bins, padded_window, sample_rate, 20.0, 0.0, 100.0, -500.0, vtln_warp
    )
    return torch.nn.functional.pad(bank, (0, 1))


def kaldi_log_mel(
    wave: Tensor, sample_rate: float, num_mel_bins: int, frame_length: float = FRAME_LENGTH_MS,
    frame_shift: float = FRAME_SHIFT_MS, vtln_warp: float = 1.0,
) -> Tensor:
    """``torchaudio.compliance.kaldi.fbank`` of a 1-D waveform for the options this recipe uses (hanning window,
    htk_compat, no energy, no dither, snip_edges, DC removal, pre-emphasis 0.97, FFT size the next power of two),
    equal to it to float rounding: (frames, num_mel_bins) log mel energies.

    Written here because kaldi.fbank rebuilds the (VTLN-warped) mel bank on every call, a third of a training
    clip's cost in the loader; here the bank is cached per warp factor, rounded to ``VTLN_WARP_STEP``.
    """
    window = int(sample_rate * frame_length * 0.001)
    shift = int(sample_rate * frame_shift * 0.001)
    padded = 1 << (window - 1).bit_length()
    frames = wave.unfold(0, window, shift)  # (m, window), only frames that fit whole (snip_edges)
    frames = frames - frames.mean(dim=1, keepdim=True)
    frames = frames - 0.97 * torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # pre-emphasis, first sample kept
    frames = frames * torch.hann_window(window, periodic=False, dtype=frames.dtype)
    power = torch.fft.rfft(frames, n=padded).abs().pow(2.0)  # (m, padded // 2 + 1)
    warp = round(round(float(vtln_warp) / VTLN_WARP_STEP) * VTLN_WARP_STEP, 6)
    energies = power @ _mel_bank(num_mel_bins, padded, float(sample_rate), warp).to(power.dtype).T
    return energies.clamp_min(torch.finfo(energies.dtype).eps).log()


def clip_statistics(fbank: Tensor) -> tuple[float, float]:
    """Mean and std of one clip's raw log-mel values (``clip_norm``); a constant clip gets std 1."""
    std = float(fbank.std()) if fbank.numel() > 1 else 0.0
    return float(fbank.mean()), std if std > 1e-5 else 1.0


def change_speed(waveform: Tensor, sample_rate: int, factor: float) -> Tensor:
    """Speed perturbation: the clip played ``factor`` times faster (tempo and pitch together), same sample rate.

    ``factor`` is rounded to 0.01 so the resampling ratio stays small; the result is torchaudio.functional.speed's.
    """
    factor = round(float(factor), 2)
    if factor == 1.0:
        return waveform
    return _speed_resampler(int(sample_rate), factor)(waveform)


@functools.lru_cache(maxsize=64)
def _speed_resampler(sample_rate: int, factor: float) -> torchaudio.transforms.Resample:
    """What ``torchaudio.functional.speed(waveform, sample_rate, factor)`` computes, as a Resample transform that
    keeps its sinc kernel (the functional form rebuilds it on every call)."""
    source = int(factor * sample_rate)
    common = math.gcd(source, sample_rate)
    return torchaudio.transforms.Resample(source // common, sample_rate // common)


def mix_waveforms(first: Tensor, second: Tensor, lam: float) -> Tensor:
    """Waveform mixup as in AST: ``lam * a + (1 - lam) * b`` of the mean-removed clips, mean removed again.

    ``second`` is zero-padded or cut to the length of ``first``.
    """
    second = fix_length(second, first.shape[-1]) if second.shape[-1] != first.shape[-1] else second
    mixed = lam * (first - first.mean()) + (1.0 - lam) * (second - second.mean())
    return mixed - mixed.mean()


def add_background_noise(waveform: Tensor, noise: Tensor, snr_db: float) -> Tensor:
    """Add a random segment of ``noise`` (1-D, same sample rate) to ``waveform`` at ``snr_db`` dB SNR."""
    n = waveform.shape[-1]
    if noise.shape[-1] < n:
        repeats = -(-n // max(noise.shape[-1], 1))
        noise = noise.repeat(repeats)
    start = int(torch.randint(0, noise.shape[-1] - n + 1, ()).item())
    segment = noise[start : start + n]
    signal_power = waveform.pow(2).mean()
    noise_power = segment.pow(2).mean()
    if noise_power <= 0 or signal_power <= 0:
        return waveform
    scale = torch.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return waveform + scale * segment


class SpecAugment(torch.nn.Module):
    """SpecAugment masks on a ``(T, F)`` feature map, via torchaudio's FrequencyMasking / TimeMasking.

    A parameter of 0 disables that mask. The masked value is 0 (applied to raw log-mel values, as AST does).
    """

    def __init__(self, freq_mask: int = 48, time_mask: int = 48) -> None:
        super().__init__()
        self.freq = torchaudio.transforms.FrequencyMasking(freq_mask) if freq_mask > 0 else None
        self.time = torchaudio.transforms.TimeMasking(time_mask) if time_mask > 0 else None

    def forward(self, fbank: Tensor) -> Tensor:
        spec = fbank.t().unsqueeze(0)  # (T, F) -> (1, F, T): torchaudio masks expect (..., freq, time)
        if self.freq is not None:
            spec = self.freq(spec)
        if self.time is not None:
            spec = self.time(spec)
        return spec.squeeze(0).t()  # (1, F, T) -> (T, F)


def jitter_and_roll(fbank: Tensor, noise_scale: float = 0.1, roll_frames: int = 10) -> Tensor:
    """AST's last train step: add ``U(0, 1) * noise_scale`` scaled by one random factor, then roll in time.

    The roll shift is uniform in ``[-roll_frames, roll_frames]``; either step is skipped when its parameter is 0.
    """
    if noise_scale > 0:
        fbank = fbank + torch.rand_like(fbank) * torch.rand(()) * noise_scale
    if roll_frames > 0:
        shift = int(torch.randint(-roll_frames, roll_frames + 1, ()).item())
        fbank = torch.roll(fbank, shift, dims=0)
    return fbank
