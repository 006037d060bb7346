"""The MFCC + logistic-regression baseline: features from the front end's fbank, and a working classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.fft import idct

from encoder.features import FbankConfig, fbank
from eval.mfcc import mfcc_features, mfcc_logreg_baseline


def test_mfcc_features_and_logreg_baseline():
    sr = 16000
    t = np.arange(sr // 2) / sr
    rng = np.random.default_rng(0)
    # two classes: low tone vs high tone, random phase / level / noise, one clip of a different length
    wavs, labels = [], []
    for k in range(40):
        f = 300.0 if k % 2 else 2500.0
        wav = rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) + 0.02 * rng.normal(size=t.size)
        wavs.append(wav if k != 3 else wav[: sr // 4])
        labels.append(k % 2)
    feats = mfcc_features(wavs, sr, n_mfcc=20)
    assert feats.shape == (40, 40) and np.all(np.isfinite(feats))
    out = mfcc_logreg_baseline(wavs[:24], labels[:24], wavs[24:], labels[24:], sample_rate=sr, n_mfcc=20)
    assert out["accuracy"] > 0.9 and out["n_features"] == 40
    # the DCT-II of log mel energies: C0 of silence-plus-epsilon is finite, and a louder clip has a larger C0
    quiet, loud = mfcc_features(np.stack([0.01 * wavs[0], wavs[0]]), sr)
    assert loud[0] > quiet[0]


def test_mfcc_is_the_dct_of_the_front_end_fbank():
    # with every coefficient kept, the inverse DCT of the mean MFCCs is the mean log-mel frame of encoder.features
    rng = np.random.default_rng(1)
    wav = rng.normal(scale=0.1, size=16000)
    feats = mfcc_features([wav], 16000, n_mfcc=32, n_mels=32)
    log_mel = fbank(torch.as_tensor(wav), FbankConfig(num_mel_bins=32)).numpy()
    np.testing.assert_allclose(idct(feats[0, :32], type=2, norm="ortho"), log_mel.mean(0), rtol=1e-5, atol=1e-5)
    # a clip shorter than one 25 ms window is padded to one frame
    assert np.all(np.isfinite(mfcc_features([wav[:100]], 16000, n_mfcc=13)))


def test_mfcc_validation():
    with pytest.raises(ValueError, match="no waveforms"):
        mfcc_features([])
    with pytest.raises(ValueError, match="cannot exceed"):
        mfcc_features([np.zeros(400)], n_mfcc=70, n_mels=64)
    with pytest.raises(ValueError, match="1-D"):
        mfcc_features([np.zeros((2, 400))])
    with pytest.raises(ValueError, match="differ"):
        mfcc_logreg_baseline([np.zeros(400)] * 2, [0], [np.zeros(400)], [0])
