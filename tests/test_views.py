"""Per-view spectrogram augmentation on the cached-feature pretraining path (encoder/data/views.py)."""
from __future__ import annotations

import math

import numpy as np
import torch

from encoder.data.dataset import PretrainDataset
from encoder.data.views import (
    FLOOR,
    ViewAugmentConfig,
    add_noise,
    add_reverb,
    augment_view,
    limit_band,
    stretch_time,
    warp_freq,
)
from encoder.features import FbankConfig


def _spec(frames=100, bins=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames, bins, generator=g) - 8.0


def test_identity_factors_leave_the_spectrogram_alone():
    x = _spec()
    torch.testing.assert_close(stretch_time(x, 1.0), x)
    torch.testing.assert_close(warp_freq(x, 1.0), x)


def test_each_transform_does_what_it_says():
    x = _spec()
    assert stretch_time(x, 1.25).shape[0] == 80 and stretch_time(x, 0.8).shape[0] == 125
    up = warp_freq(x, 1.2)  # energy moves up: the top bins come from below the top, the last ones are floor-free
    torch.testing.assert_close(up[:, 60], x[:, 50])
    down = warp_freq(x, 0.8)
    assert (down[:, -5:] == FLOOR).all()  # nothing above the old top edge
    cut = limit_band(x, 4000.0, 16000)
    kept = int((cut[0] > FLOOR).sum())
    assert 50 < kept < 128 and (cut[:, kept:] == FLOOR).all() and torch.equal(cut[:, :kept], x[:, :kept])
    # a click followed by silence: reverb leaves energy after it that decays, and never removes energy
    click = torch.full((60, 4), FLOOR)
    click[10] = 0.0
    wet = add_reverb(click, rt60_s=0.3)
    assert (wet >= click - 1e-5).all()
    assert wet[12, 0] > wet[16, 0] > wet[20, 0] > FLOOR + 1  # tail energy, 6 dB below the dry click in all
    noisy = add_noise(x, snr_db=0.0, tilt=0.0, rng=np.random.default_rng(0))
    assert (noisy >= x).all()
    ratio = (noisy.exp().mean() - x.exp().mean()) / x.exp().mean()
    assert 0.5 < float(ratio) < 2.0  # 0 dB SNR: noise power about equal to the clip's


def test_views_are_deterministic_and_differ_from_each_other():
    cfg = ViewAugmentConfig(enabled=True)
    x = _spec(150)
    a = augment_view(x, 128, cfg, np.random.default_rng(7), lambda: _spec(90, seed=1))
    b = augment_view(x, 128, cfg, np.random.default_rng(7), lambda: _spec(90, seed=1))
    c = augment_view(x, 128, cfg, np.random.default_rng(8), lambda: _spec(90, seed=1))
    assert a.shape == (128, 128) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dataset_gives_each_cached_view_its_own_transforms():
    rows = [{"id": f"c{i}", "path": f"/nonexistent/{i}.wav"} for i in range(6)]
    feats = {r["id"]: _spec(140, seed=i) for i, r in enumerate(rows)}
    fb = FbankConfig(target_frames=128)
    plain = PretrainDataset(rows, fb, None, seed=0, features=feats)
    aug = PretrainDataset(rows, fb, None, seed=0, features=feats, views=ViewAugmentConfig(enabled=True))
    p = plain[(0, 2)]["views"]
    assert torch.equal(p[0], p[1])  # without view transforms both views are the same patches
    v = aug[(0, 2)]["views"]
    assert v.shape == (2, 128, 128) and not torch.equal(v[0], v[1])
    assert torch.equal(v, aug[(0, 2)]["views"])  # (seed, epoch, index) fixes the draw: resume-safe
    assert not torch.equal(v, aug[(1, 2)]["views"])  # a new epoch draws new views
    assert math.isfinite(float(v.mean()))


def test_finetuning_batches_take_the_same_view_transforms():
    from encoder.features import normalise
    from eval.classifier_training import view_transform_batch

    x = normalise(torch.stack([_spec(128, seed=i) for i in range(4)]), -4.27, 4.57)
    cfg = ViewAugmentConfig(enabled=True)
    a = view_transform_batch(x, cfg, -4.27, 4.57, torch.Generator().manual_seed(0))
    b = view_transform_batch(x, cfg, -4.27, 4.57, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    off = ViewAugmentConfig(enabled=True, crop=False, time_shift=0, time_stretch=0, freq_warp=0, gain=0, noise=0,
                            mix=0, reverb=0, band_limit=0)
    torch.testing.assert_close(view_transform_batch(x, off, -4.27, 4.57, torch.Generator()), x)  # round trip
