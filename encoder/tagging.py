"""Tag sounds with an imported classifier (``mosaic-alm tag``): label scores of whole clips.

A clip is turned into the classifier's own input (its fbank constants, normalisation and input length travel in its
folder). A clip no longer than the window is scored once (zero-padded, as the reference pads); a longer one is cut
into windows of the model's input length every ``hop`` frames (the last window ends at the clip's end, so every
frame is seen), each window is scored, and the scores are pooled: the maximum per label for multi-label heads
(AudioSet: a sound present in any window is present in the clip), the mean for single-label heads.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .features import fbank, load_audio, normalise, pad_or_crop

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")


def expand_audio_paths(items) -> list[Path]:
    """Files as given; folders become their audio files (recursively, sorted)."""
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
        else:
            out.append(p)
    return out


def window_inputs(wave: torch.Tensor, fb, hop_frames: int | None = None) -> torch.Tensor:
    """Mono 16 kHz waveform -> normalised windows [W, target_frames, bins] (DC removed over the whole clip)."""
    spec = fbank(wave - wave.mean(), dataclasses.replace(fb, target_frames=fb.target_frames))
    n, t = spec.shape[0], fb.target_frames
    hop = max(1, hop_frames or t)
    starts = list(range(0, max(n - t, 0) + 1, hop))
    if n > t and starts[-1] != n - t:
        starts.append(n - t)
    return torch.stack([normalise(pad_or_crop(spec, t, s), fb.mean, fb.std) for s in starts])


@torch.no_grad()
def tag_clip(model, wave: torch.Tensor, top_k: int = 5, hop_frames: int | None = None, batch_size: int = 8) -> dict:
    """Top-``top_k`` labels with scores for one waveform, and the number of windows scored."""
    fb = model.config.fbank_config()
    x = window_inputs(wave, fb, hop_frames)
    scores = torch.cat([model.scores(model(x[i:i + batch_size]).logits) for i in range(0, len(x), batch_size)])
    pooled = scores.max(0).values if model.head.cfg.multi_label else scores.mean(0)
    k = min(top_k, pooled.numel())
    vals, idx = pooled.topk(k)
    names = model.config.id2label
    return {"windows": len(x), "seconds": round(wave.numel() / fb.sample_rate, 3),
            "labels": [{"label": names[int(i)], "score": round(float(v), 4)} for v, i in zip(vals, idx)]}


def tag_file(model, path, top_k: int = 5, hop_frames: int | None = None) -> dict:
    fb = model.config.fbank_config()
    wave = load_audio(path, fb.sample_rate)
    return {"audio": str(path), **tag_clip(model, wave, top_k, hop_frames)}


__all__ = ["tag_clip", "tag_file", "window_inputs", "expand_audio_paths", "AUDIO_SUFFIXES"]
