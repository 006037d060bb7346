"""Per-view augmentation of cached log-mel spectrograms: what makes two views of one clip differ beyond their masks.

With cached fbank features both views of a clip would otherwise be the same patches under two masks, and the
shortcut "match the identical overlapping patches" solves NT-Xent without learning anything about the sound.
Each view here gets its own draw of cheap spectrogram-domain transforms that also imitate what changes between a
user's audio and the embedded data (another voice or engine, instrument sample, room or channel):

* ``crop``: an independent crop offset per view inside clips longer than the target;
* ``time_shift``: the sound starts up to ``max_shift`` of the target later or earlier (zero padding, as the
  front end pads);
* ``time_stretch``: speaking rate / tempo, time axis resampled by a factor in ``stretch``;
* ``freq_warp``: vocal-tract-length / pitch-and-formant change, mel axis warped by a factor in ``warp``
  (VTLP-style, linear in mel around the low edge);
* ``gain``: level change in dB;
* ``noise``: background noise with a random spectral tilt at an SNR in ``snr_db``;
* ``mix``: another clip of the batch's dataset added at ``mix_db`` below this one;
* ``reverb``: a room, power smeared along time by an exponential decay with RT60 in ``rt60_s``;
* ``band_limit``: a channel or codec with its band cut above a frequency in ``cutoff_hz``.

All transforms work in the power domain of the Kaldi log-mel features (natural log of mel energies) and keep the
result a valid log-mel spectrogram. Every draw comes from the generator passed in (derived by the dataset from
(seed, epoch, index, view)), so resumed runs reproduce the same views.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mosaic_core.config import Probability

FLOOR = math.log(torch.finfo(torch.float32).eps)  # the front end's log-energy floor


@dataclass
class ViewAugmentConfig:
    """Spectrogram-domain augmentations drawn independently for each view (p = probability of each)."""

    enabled: bool = False
    crop: bool = True  # independent crop offsets per view (clips longer than the target)
    time_shift: Probability = 0.5
    max_shift: Probability = 0.2  # fraction of the target frames
    time_stretch: Probability = 0.5
    stretch: list[float] = field(default_factory=lambda: [0.8, 1.25])
    freq_warp: Probability = 0.5
    warp: list[float] = field(default_factory=lambda: [0.85, 1.15])
    gain: Probability = 0.5
    gain_db: list[float] = field(default_factory=lambda: [-10.0, 6.0])
    noise: Probability = 0.3
    snr_db: list[float] = field(default_factory=lambda: [5.0, 30.0])
    mix: Probability = 0.3
    mix_db: list[float] = field(default_factory=lambda: [-20.0, -6.0])
    reverb: Probability = 0.3
    rt60_s: list[float] = field(default_factory=lambda: [0.1, 0.8])
    band_limit: Probability = 0.2
    cutoff_hz: list[float] = field(default_factory=lambda: [2500.0, 6000.0])


def _uniform(rng: np.random.Generator, bounds) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _log_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(exp(a) + exp(b)), elementwise."""
    return torch.logaddexp(a, b)


def stretch_time(spec: torch.Tensor, factor: float) -> torch.Tensor:
    """Resample the time axis of ``spec`` [T, F] to ``round(T / factor)`` frames (factor > 1: faster)."""
    frames = max(1, round(spec.shape[0] / factor))
    return F.interpolate(spec.T[None], size=frames, mode="linear", align_corners=True)[0].T


def warp_freq(spec: torch.Tensor, factor: float) -> torch.Tensor:
    """Warp the mel axis: bin ``k`` takes the energy of bin ``k / factor`` (factor > 1 moves energy up)."""
    bins = spec.shape[1]
    src = torch.arange(bins, dtype=spec.dtype) / factor
    lo = src.floor().clamp(0, bins - 1).long()
    hi = (lo + 1).clamp(max=bins - 1)
    w = (src - lo).clamp(0, 1)
    out = spec[:, lo] * (1 - w) + spec[:, hi] * w
    return torch.where(src[None] > bins - 1, torch.full_like(out, FLOOR), out)


def add_noise(spec: torch.Tensor, snr_db: float, tilt: float, rng: np.random.Generator) -> torch.Tensor:
    """Noise whose mean power is ``snr_db`` below the clip's, with a spectral tilt (dB across the band)."""
    bins = spec.shape[1]
    shape = torch.linspace(-tilt / 2, tilt / 2, bins) * math.log(10) / 10
    level = torch.logsumexp(spec.flatten(), 0) - math.log(spec.numel()) - snr_db * math.log(10) / 10
    fluct = torch.from_numpy(rng.standard_normal(spec.shape).astype(np.float32)) * 0.5
    return _log_add(spec, level + shape[None] + fluct)


def add_reverb(spec: torch.Tensor, rt60_s: float, frame_s: float = 0.01, wet_db: float = -6.0) -> torch.Tensor:
    """Power smeared along time by an exponential decay of 60 dB per ``rt60_s``, mixed ``wet_db`` below dry."""
    taps = max(2, min(int(rt60_s / frame_s), 150))
    decay = torch.exp(-torch.arange(taps, dtype=torch.float32) * frame_s * 6 * math.log(10) / rt60_s)
    kernel = (decay / decay.sum()).flip(0)[None, None].repeat(spec.shape[1], 1, 1)
    power = spec.T.exp()[None]  # [1, F, T]
    tail = F.conv1d(F.pad(power, (taps - 1, 0)), kernel, groups=spec.shape[1])[0].T
    return _log_add(spec, tail.clamp_min(1e-30).log() + wet_db * math.log(10) / 10)


def limit_band(spec: torch.Tensor, cutoff_hz: float, sample_rate: int) -> torch.Tensor:
    """Bins whose mel centre lies above ``cutoff_hz`` drop to the floor (a low-pass channel)."""
    bins = spec.shape[1]

    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)

    top = mel(sample_rate / 2)
    keep = int(bins * mel(cutoff_hz) / top)
    out = spec.clone()
    out[:, keep:] = FLOOR
    return out


def augment_view(spec: torch.Tensor, target_frames: int, cfg: ViewAugmentConfig, rng: np.random.Generator,
                 other: Callable[[], torch.Tensor] | None = None, sample_rate: int = 16000) -> torch.Tensor:
    """One view: ``spec`` [T, F] (un-normalised log-mel, natural length) -> augmented [target_frames, F]."""
    x = spec
    if rng.random() < cfg.time_stretch:
        x = stretch_time(x, _uniform(rng, cfg.stretch))
    if rng.random() < cfg.freq_warp:
        x = warp_freq(x, _uniform(rng, cfg.warp))
    offset = int(rng.random() * max(0, x.shape[0] - target_frames)) if cfg.crop else 0
    x = x[offset:offset + target_frames] if x.shape[0] > target_frames else x
    if rng.random() < cfg.mix and other is not None:
        y = other()[:x.shape[0]]
        y = F.pad(y, (0, 0, 0, x.shape[0] - y.shape[0]), value=FLOOR)
        gap = (torch.logsumexp(x.flatten(), 0) - torch.logsumexp(y.flatten(), 0)).item()
        x = _log_add(x, y + gap + _uniform(rng, cfg.mix_db) * math.log(10) / 10)
    if rng.random() < cfg.reverb:
        x = add_reverb(x, _uniform(rng, cfg.rt60_s))
    if rng.random() < cfg.noise:
        x = add_noise(x, _uniform(rng, cfg.snr_db), float(rng.uniform(-12, 12)), rng)
    if rng.random() < cfg.band_limit:
        x = limit_band(x, _uniform(rng, cfg.cutoff_hz), sample_rate)
    if rng.random() < cfg.gain:
        x = x + _uniform(rng, cfg.gain_db) * math.log(10) / 10
    if rng.random() < cfg.time_shift:
        shift = int(rng.integers(-int(cfg.max_shift * target_frames), int(cfg.max_shift * target_frames) + 1))
        x = F.pad(x, (0, 0, shift, 0)) if shift > 0 else x[-shift:] if -shift < x.shape[0] else x
    if x.shape[0] < target_frames:
        x = F.pad(x, (0, 0, 0, target_frames - x.shape[0]))
    return x[:target_frames].contiguous()
