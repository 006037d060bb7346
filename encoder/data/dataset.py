"""Datasets over manifests: waveform views with augmentations for pretraining, fixed inputs for evaluation.

Every random draw made for a sample is derived from ``(seed, epoch, index)``, so a restarted run (or a data-loader
worker that is replaced) reproduces exactly the same views. A clip that fails to decode does not stop the run:
``__getitem__`` returns a record with ``error`` set, the collate function drops it and reports it, and the trainer
counts it and writes it to a quarantine file (or fails, if so configured).
"""
from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mosaic_core.config import Probability
from mosaic_core.io import atomic_write_with

from ..features import (
    AudioError,
    FbankConfig,
    fbank,
    load_audio,
    normalise,
    pad_or_crop,
    prepare_waveform,
)
from .views import ViewAugmentConfig, augment_view


@dataclass
class WaveAugmentConfig:
    """Waveform augmentations (audiomentations) applied independently to each view; p = probability."""

    enabled: bool = True
    polarity_inversion: Probability = 0.5
    time_stretch: Probability = 0.3
    gaussian_snr: Probability = 0.5
    min_snr_db: float = 10.0
    max_snr_db: float = 40.0
    gain: Probability = 0.5
    high_pass: Probability = 0.2
    band_stop: Probability = 0.2
    pitch_shift: Probability = 0.2
    roll: Probability = 0.5  # circular shift by a random magnitude (up to the whole clip)


def build_augment(cfg: WaveAugmentConfig, sample_rate: int):
    import audiomentations as A

    return A.Compose([
        A.PolarityInversion(p=cfg.polarity_inversion),
        A.TimeStretch(min_rate=0.85, max_rate=1.15, leave_length_unchanged=True, p=cfg.time_stretch),
        A.AddGaussianSNR(min_snr_db=cfg.min_snr_db, max_snr_db=cfg.max_snr_db, p=cfg.gaussian_snr),
        A.Gain(min_gain_db=-12.0, max_gain_db=6.0, p=cfg.gain),
        A.HighPassFilter(min_cutoff_freq=20.0, max_cutoff_freq=400.0, p=cfg.high_pass),
        A.BandStopFilter(min_center_freq=200.0, max_center_freq=4000.0, p=cfg.band_stop),
        A.PitchShift(min_semitones=-2.0, max_semitones=2.0, p=cfg.pitch_shift),
        A.Shift(min_shift=-1.0, max_shift=1.0, rollover=True, p=cfg.roll),
    ])


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class PretrainDataset(Dataset):
    """Two augmented views of each clip, as normalised spectrograms [2, target_frames, mel_bins].

    Keys are ``(epoch, index)`` pairs (from :class:`EpochBatchSampler`) so draws depend only on seed, epoch and
    index. Both views share one crop offset; they differ by waveform augmentation (and later by their masks).
    With ``features`` (from :func:`cache_features`), decoding and augmentation are skipped.
    """

    def __init__(self, rows: Sequence[dict], fbank_cfg: FbankConfig, augment: WaveAugmentConfig | None = None,
                 seed: int = 0, features: dict[str, torch.Tensor] | None = None,
                 views: ViewAugmentConfig | None = None):
        self.rows = list(rows)
        self.cfg = fbank_cfg
        self.aug_cfg = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.features = features
        self.view_cfg = views if views is not None and views.enabled else None
        self._augment = None
        self.max_replacements = 8

    def __len__(self) -> int:
        return len(self.rows)

    def _spec(self, wave: torch.Tensor, offset_u: float) -> torch.Tensor:
        wave = wave - wave.mean()
        spec = fbank(wave, self.cfg)
        offset = int(offset_u * max(0, spec.shape[0] - self.cfg.target_frames))
        return normalise(pad_or_crop(spec, self.cfg.target_frames, offset), self.cfg.mean, self.cfg.std)

    def __getitem__(self, key):
        """Views of clip ``index``; if it cannot be decoded, of a deterministic replacement (the bad clip is
        reported in ``bad``), so every rank's batch keeps its size and collectives stay in step."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        bad = []
        for attempt in range(self.max_replacements + 1):
            i = index if attempt == 0 else (index + derive_seed(self.seed, epoch, index, attempt)) % len(self.rows)
            try:
                views = self._views(epoch, i)
            except AudioError as exc:
                bad.append({"id": self.rows[i]["id"], "index": i, "error": str(exc)})
                continue
            return {"id": self.rows[i]["id"], "index": i, "views": views, "bad": bad, "error": None}
        return {"id": self.rows[index]["id"], "index": index, "bad": bad,
                "error": f"{len(bad)} clips in a row failed to decode; last: {bad[-1]['error']}"}

    def _views(self, epoch: int, index: int) -> torch.Tensor:
        row = self.rows[index]
        if self.features is None:
            return self.views_of(epoch, index, row["path"],
                                 wave=load_audio(row["path"], self.cfg.sample_rate, self.cfg.max_seconds))
        spec = self.features.get(str(row["id"]))
        if spec is None:
            raise AudioError(row["path"], "no cached features (the clip failed to decode when cached)")
        return self.views_of(epoch, index, row["path"], spec=spec)

    def views_of(self, epoch: int, key, source, *, wave: torch.Tensor | None = None,
                 spec: torch.Tensor | None = None) -> torch.Tensor:
        """Two views [2, T, F] of one clip given its mono waveform (waveform augmentations, then fbank) or its
        un-normalised fbank ``spec`` (per-view spectrogram transforms when ``views`` is enabled); every draw comes
        from (seed, epoch, key): the manifest index here, the clip id for shards (:class:`ShardViews`)."""
        rng = np.random.default_rng(derive_seed(self.seed, epoch, key))
        offset_u = float(rng.random())
        if spec is not None:
            if self.view_cfg is not None:
                views = torch.stack([self._spec_view(spec, epoch, key, v) for v in range(2)])
            else:
                offset = int(offset_u * max(0, spec.shape[0] - self.cfg.target_frames))
                x = normalise(pad_or_crop(spec, self.cfg.target_frames, offset), self.cfg.mean, self.cfg.std)
                views = torch.stack([x, x])
        else:
            views = torch.stack([self._spec(self._aug(wave, rng), offset_u) for _ in range(2)])
        if not torch.isfinite(views).all():
            raise AudioError(source, "features are not finite after augmentation")
        return views

    def _spec_view(self, spec: torch.Tensor, epoch: int, index, view: int) -> torch.Tensor:
        """One view of a cached spectrogram under its own draw of :mod:`encoder.data.views` transforms."""
        rng = np.random.default_rng(derive_seed(self.seed, "view", epoch, index, view))

        def other() -> torch.Tensor:  # another clip to mix in (one that has cached features; none for shards)
            for _ in range(8 if self.features else 0):
                found = self.features.get(str(self.rows[int(rng.integers(len(self.rows)))]["id"]))
                if found is not None:
                    return found
            return spec

        x = augment_view(spec, self.cfg.target_frames, self.view_cfg, rng, other, self.cfg.sample_rate)
        return normalise(x, self.cfg.mean, self.cfg.std)

    def _aug(self, wave: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.aug_cfg is None:
            return wave
        if self._augment is None:
            self._augment = build_augment(self.aug_cfg, self.cfg.sample_rate)
        seed = int(rng.integers(0, 2**31 - 1))
        random.seed(seed)  # audiomentations draws from the global generators
        np.random.seed(seed)
        out = self._augment(samples=wave.numpy().astype(np.float32), sample_rate=self.cfg.sample_rate)
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


class ShardViews:
    """A :class:`~encoder.data.shards.ShardDataset` transform for pretraining: a decoded clip -> ``{"id", "views"}``
    made exactly as :class:`PretrainDataset` makes them (``maker``: one with no rows), from the waveform (channels
    averaged and resampled as ``load_audio`` does) or, with ``spectrogram``, from its fbank computed on the fly (the
    shard path of ``data.cached_features``: shards stream, nothing is cached; view mixing has no other clip). Draws
    come from (seed, epoch, clip id), so a resumed run repeats them. A class, so spawned workers can unpickle it."""

    def __init__(self, maker: PretrainDataset, spectrogram: bool):
        self.maker, self.spectrogram = maker, spectrogram

    def __call__(self, sample: dict) -> dict:
        cfg, source = self.maker.cfg, str(sample["id"])
        mono = torch.from_numpy(np.ascontiguousarray(sample["audio"].numpy().T.mean(axis=1)))  # as load_audio
        wave = prepare_waveform(mono, sample["sample_rate"], cfg.sample_rate, source=source,
                                max_seconds=cfg.max_seconds)
        key = str(sample["id"])
        if self.spectrogram:
            views = self.maker.views_of(sample["epoch"], key, source, spec=fbank(wave - wave.mean(), cfg))
        else:
            views = self.maker.views_of(sample["epoch"], key, source, wave=wave)
        return {"id": sample["id"], "views": views}


def collate_views(items: list[dict]) -> dict:
    failed = [it for it in items if it["error"] is not None]
    if failed:
        raise RuntimeError(f"data: could not find a decodable replacement for clip {failed[0]['id']}: "
                           f"{failed[0]['error']}")
    bad = [b for it in items for b in it["bad"]]
    return {"views": torch.stack([it["views"] for it in items]), "ids": [it["id"] for it in items], "bad": bad}


class EpochBatchSampler(Sampler):
    """Deterministic batches of ``(epoch, index)`` keys for one rank.

    Each epoch is a permutation drawn from (seed, epoch), cut into global batches of ``global_batch``; rank r takes
    its contiguous slice of every global batch. ``start_step`` skips already-trained steps without loading them.

    ``groups`` (one hashable per clip, None = a group of its own) with ``group_size`` k > 1: the permutation is made
    of runs of up to k clips of one group (each group shuffled and cut into runs, the runs shuffled), so a batch
    holds several clips of the same group (e.g. one voice) and the contrastive task cannot tell clips apart by what
    their group shares.
    """

    def __init__(self, n: int, global_batch: int, rank: int = 0, world: int = 1, seed: int = 0,
                 start_step: int = 0, max_steps: int | None = None, groups: Sequence | None = None,
                 group_size: int = 1):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world}")
        if n < global_batch:
            raise ValueError(f"dataset has {n} clips, fewer than one global batch of {global_batch}")
        if groups is not None and len(groups) != n:
            raise ValueError(f"{len(groups)} group ids for {n} clips")
        self.n, self.global_batch, self.rank, self.world = n, global_batch, rank, world
        self.seed, self.start_step, self.max_steps = seed, start_step, max_steps
        self.steps_per_epoch = n // global_batch
        self.group_size = group_size
        self.members: list[list[int]] | None = None
        if groups is not None and group_size > 1:
            by: dict = {}
            for i, g in enumerate(groups):
                by.setdefault(("one", i) if g is None else ("group", g), []).append(i)
            self.members = list(by.values())

    def permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        if self.members is None:
            return torch.randperm(self.n, generator=gen)
        runs = []
        for m in self.members:
            order = torch.tensor(m)[torch.randperm(len(m), generator=gen)]
            runs += list(order.split(self.group_size))
        return torch.cat([runs[i] for i in torch.randperm(len(runs), generator=gen).tolist()])

    def __iter__(self):
        step = self.start_step
        local = self.global_batch // self.world
        while self.max_steps is None or step < self.max_steps:
            epoch, k = divmod(step, self.steps_per_epoch)
            perm = self.permutation(epoch)
            start = k * self.global_batch + self.rank * local
            yield [(epoch, int(i)) for i in perm[start:start + local]]
            step += 1

    def __len__(self):
        return (self.max_steps or 0) - self.start_step


def cache_features(rows: Sequence[dict], fbank_cfg: FbankConfig, path: str | Path) -> dict[str, torch.Tensor]:
    """Un-normalised fbank of every clip, computed once and stored as safetensors at ``path`` (keyed by id)."""
    from safetensors.torch import load_file, save_file

    path = Path(path)
    if path.is_file():
        try:  # safetensors only: a planted pickle or a corrupt file is refused (never unpickled) and rebuilt
            feats = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            logging.getLogger(__name__).warning("feature cache %s is not a valid safetensors file (%s: %s); "
                                                "ignoring it and recomputing", path, type(exc).__name__, exc)
            feats = {}
        if feats and all(r["id"] in feats for r in rows):
            return feats
    from tqdm import tqdm

    feats = {}
    for r in tqdm(rows, desc=f"caching fbank features ({len(rows)} clips)", mininterval=5.0):
        try:
            wave = load_audio(r["path"], fbank_cfg.sample_rate, fbank_cfg.max_seconds)
        except AudioError:
            continue  # bad clips are reported by the dataset when their id is missing
        feats[str(r["id"])] = fbank(wave - wave.mean(), fbank_cfg).contiguous()
    atomic_write_with(path, lambda tmp: save_file(feats, str(tmp)))
    return feats
