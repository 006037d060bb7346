"""Audio front end: decode any common file, mono, 16 kHz, Kaldi-compatible log-mel fbank, normalisation.

Everything a user can get wrong with a file raises :class:`AudioError`, whose message names the file and the reason.
The fbank is a torch re-implementation of ``torchaudio.compliance.kaldi.fbank`` (batched, runs on any device),
checked numerically against torchaudio's output in ``tests/test_features.py``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 16000
# AudioSet statistics used by AST / AudioMAE / AudioMosaic; stored in every model config.
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


class AudioError(ValueError):
    """A file or waveform the front end cannot turn into features; the message names the source and the reason."""

    def __init__(self, source, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


@dataclass(frozen=True)
class FbankConfig:
    """Kaldi fbank settings (the AudioSet/AST recipe) plus padding and normalisation."""

    sample_rate: int = SAMPLE_RATE
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis: float = 0.97
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0 means offset from Nyquist, as in Kaldi
    target_frames: int = 1024
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD
    max_seconds: float = 600.0

    @property
    def window_size(self) -> int:
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def window_shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def padded_window_size(self) -> int:
        return 1 << (self.window_size - 1).bit_length()


# --------------------------------------------------------------------------------------------------------- decoding
def read_sound(file, source, max_seconds: float, what: str = "") -> tuple[np.ndarray, int]:
    """Samples [frames, channels] float32 and the sample rate of ``file`` (a path or a file object) via
    libsndfile. The header is checked first: a file declaring more than ``max_seconds`` is refused before any
    sample is read. Every failure is an AudioError naming ``source`` (``what`` names the format, e.g. " FLAC")."""
    import soundfile as sf

    try:
        with sf.SoundFile(file) as f:
            sr, channels, frames = f.samplerate, f.channels, f.frames
            if sr <= 0 or channels <= 0:
                raise AudioError(source, f"invalid header (sample rate {sr}, {channels} channels)")
            if frames > max_seconds * sr:
                raise AudioError(source, f"declares {frames / sr:.1f} s of audio, above the {max_seconds:g} s maximum")
            data = f.read(frames=int(max_seconds * sr) + 1, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (RuntimeError, sf.LibsndfileError, TypeError, ValueError, OSError) as exc:
        raise AudioError(source, f"cannot decode{what}: {exc}") from None
    if data.shape[0] == 0:
        raise AudioError(source, "holds no audio samples (zero length)")
    return data, sr


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, max_seconds: float = 600.0) -> torch.Tensor:
    """Decode ``path`` (wav/flac/ogg/mp3/... via libsndfile) to a mono float32 tensor at ``sample_rate``.

    Refuses files declaring more than ``max_seconds`` before reading any samples, so a hostile header cannot make
    us allocate hours of audio.
    """

    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file does not exist")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    data, sr = read_sound(str(path), path, max_seconds)
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    return prepare_waveform(wave, sr, sample_rate, source=path, max_seconds=max_seconds)


def prepare_waveform(wave, orig_sr: int, sample_rate: int = SAMPLE_RATE, source="<waveform>",
                     max_seconds: float = 600.0) -> torch.Tensor:
    """Check a mono waveform for emptiness, non-finite values and length (``max_seconds`` at ``orig_sr``, checked
    before resampling, so a tiny rate cannot blow up memory), resample it to ``sample_rate``."""
    wave = torch.as_tensor(wave, dtype=torch.float32)
    if wave.dim() == 2:  # [channels, samples]
        wave = wave.mean(0)
    if wave.dim() != 1:
        raise AudioError(source, f"expected a mono waveform or [channels, samples], got shape {tuple(wave.shape)}")
    if wave.numel() == 0:
        raise AudioError(source, "holds no audio samples (zero length)")
    if not torch.isfinite(wave).all():
        bad = int((~torch.isfinite(wave)).sum())
        raise AudioError(source, f"contains {bad} NaN/inf samples")
    if orig_sr <= 0:
        raise AudioError(source, f"invalid sample rate {orig_sr}")
    if wave.numel() > max_seconds * orig_sr:
        raise AudioError(source, f"is {wave.numel() / orig_sr:.1f} s long at {orig_sr} Hz, above the "
                                 f"{max_seconds:g} s maximum")
    if orig_sr != sample_rate:
        wave = resample(wave, orig_sr, sample_rate)
    return wave


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """High-quality resampling (libsoxr, VHQ)."""
    import soxr

    out = soxr.resample(wave.numpy().astype(np.float32), orig_sr, new_sr, quality="VHQ")
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


# ------------------------------------------------------------------------------------------------------------ fbank
def _mel(f):
    return 1127.0 * torch.log(1.0 + f / 700.0)


@lru_cache(maxsize=8)
def mel_banks(num_bins: int, padded_window_size: int, sample_rate: float, low_freq: float, high_freq: float):
    """Kaldi's triangular mel filters on the mel scale 1127 ln(1 + f/700): [num_bins, padded/2 + 1]."""
    num_fft_bins = padded_window_size // 2
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"bad mel frequency range low={low_freq} high={high_freq} (nyquist {nyquist})")
    fft_bin_width = sample_rate / padded_window_size
    mel_low, mel_high = _mel(torch.tensor(low_freq, dtype=torch.float64)), _mel(
        torch.tensor(high_freq, dtype=torch.float64))
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins, dtype=torch.float64).unsqueeze(1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = _mel(fft_bin_width * torch.arange(num_fft_bins, dtype=torch.float64)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1)).to(torch.float32)  # Kaldi ignores the Nyquist bin


def fbank(wave: torch.Tensor, cfg: FbankConfig = FbankConfig()) -> torch.Tensor:
    """Kaldi log-mel fbank of ``wave`` [..., samples] -> [..., frames, num_mel_bins] (snip_edges, no dither).

    Matches ``torchaudio.compliance.kaldi.fbank(w, htk_compat=True, use_energy=False, window_type='hanning',
    dither=0.0, num_mel_bins=128, frame_shift=10, sample_frequency=16000)``. Waveforms shorter than one window
    are zero-padded to one window.
    """
    wave = torch.as_tensor(wave)
    if not wave.is_floating_point():
        wave = wave.float()
    win, shift, padded = cfg.window_size, cfg.window_shift, cfg.padded_window_size
    if wave.shape[-1] < win:
        wave = torch.nn.functional.pad(wave, (0, win - wave.shape[-1]))
    frames = wave.unfold(-1, win, shift)  # [..., n_frames, win]
    frames = frames - frames.mean(-1, keepdim=True)  # remove DC per frame
    prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = frames - cfg.preemphasis * prev
    window = torch.hann_window(win, periodic=False, dtype=frames.dtype, device=frames.device)
    frames = torch.nn.functional.pad(frames * window, (0, padded - win))
    power = torch.fft.rfft(frames, dim=-1).abs().pow(2)
    banks = mel_banks(cfg.num_mel_bins, padded, float(cfg.sample_rate), cfg.low_freq, cfg.high_freq)
    mel = power @ banks.to(device=power.device, dtype=power.dtype).T
    return torch.clamp(mel, min=torch.finfo(torch.float32).eps).log()


def pad_or_crop(spec: torch.Tensor, target_frames: int, offset: int = 0) -> torch.Tensor:
    """Zero-pad (at the end) or crop ``spec`` [..., frames, bins] to ``target_frames`` starting at ``offset``."""
    n = spec.shape[-2]
    if n < target_frames:
        return torch.nn.functional.pad(spec, (0, 0, 0, target_frames - n))
    offset = max(0, min(offset, n - target_frames))
    return spec[..., offset:offset + target_frames, :]


def normalise(spec: torch.Tensor, mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD) -> torch.Tensor:
    """AST/AudioMAE normalisation (x - mean) / (2 * std)."""
    return (spec - mean) / (2.0 * std)


def waveform_to_input(wave: torch.Tensor, cfg: FbankConfig = FbankConfig(), source="<waveform>",
                      crop_offset: int = 0) -> torch.Tensor:
    """Mono 16 kHz waveform -> normalised [target_frames, num_mel_bins] model input (DC removed first)."""
    wave = torch.as_tensor(wave, dtype=torch.float32)
    if wave.numel() == 0:
        raise AudioError(source, "holds no audio samples (zero length)")
    if not torch.isfinite(wave).all():
        raise AudioError(source, "contains NaN/inf samples")
    wave = wave - wave.mean()
    spec = normalise(pad_or_crop(fbank(wave, cfg), cfg.target_frames, crop_offset), cfg.mean, cfg.std)
    if not torch.isfinite(spec).all():  # cannot happen for finite input; guard the promise anyway
        raise AudioError(source, "produced non-finite features")
    return spec


def file_to_input(path, cfg: FbankConfig = FbankConfig()) -> torch.Tensor:
    """Decode ``path`` and return the normalised [target_frames, num_mel_bins] model input."""
    wave = load_audio(path, cfg.sample_rate, cfg.max_seconds)
    return waveform_to_input(wave, cfg, source=path)


def num_frames(num_samples: int, cfg: FbankConfig = FbankConfig()) -> int:
    """Frames the fbank yields for ``num_samples`` (snip_edges=True)."""
    return 1 + (max(num_samples, cfg.window_size) - cfg.window_size) // cfg.window_shift


def seconds_for_frames(frames: int, cfg: FbankConfig = FbankConfig()) -> float:
    return (cfg.window_size + (frames - 1) * cfg.window_shift) / cfg.sample_rate


__all__ = ["AudioError", "FbankConfig", "load_audio", "prepare_waveform", "resample", "fbank", "mel_banks",
           "pad_or_crop", "normalise", "waveform_to_input", "file_to_input", "num_frames", "seconds_for_frames",
           "SAMPLE_RATE", "AUDIOSET_MEAN", "AUDIOSET_STD"]
