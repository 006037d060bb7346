"""The MFCC + logistic-regression baseline of the encoder harness.

MFCCs are the orthonormal DCT-II of the front end's Kaldi log-mel fbank (:func:`encoder.features.fbank`: 25 ms
Hann frames every 10 ms, DC removed, pre-emphasis 0.97, mel filters 20 Hz .. Nyquist), so the repository has a
single mel filterbank. Clip-level features are the mean and std over time of each coefficient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from encoder.features import FbankConfig, fbank

__all__ = ["mfcc_features", "mfcc_logreg_baseline"]


def mfcc_features(
    waveforms: Sequence[Any] | np.ndarray | torch.Tensor,
    sample_rate: int = 16000,
    n_mfcc: int = 40,
    *,
    n_mels: int = 64,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
) -> np.ndarray:
    """Clip-level MFCC statistics ``[N, 2 * n_mfcc]``: mean then std over time of each coefficient.

    Per clip: the front end's log-mel fbank with ``n_mels`` bins (``win_ms`` / ``hop_ms`` frames), orthonormal
    DCT-II over the bins, first ``n_mfcc`` coefficients (C0 included). ``waveforms``: a ``[N, S]`` array/tensor or
    a list of 1-D arrays of any lengths (mono, float). Clips shorter than one window are zero-padded to one window.
    """
    from scipy.fft import dct

    if isinstance(waveforms, torch.Tensor):
        waveforms = waveforms.detach().cpu().numpy()
    if isinstance(waveforms, np.ndarray):
        if waveforms.ndim != 2:
            raise ValueError(f"mfcc_features: expected [N, samples] or a list of 1-D clips, got {waveforms.shape}")
        waveforms = list(waveforms)
    if len(waveforms) == 0:
        raise ValueError("mfcc_features: no waveforms")
    if n_mfcc > n_mels:
        raise ValueError(f"mfcc_features: n_mfcc ({n_mfcc}) cannot exceed n_mels ({n_mels})")
    cfg = FbankConfig(sample_rate=sample_rate, num_mel_bins=n_mels, frame_length_ms=win_ms, frame_shift_ms=hop_ms)

    feats = np.empty((len(waveforms), 2 * n_mfcc), dtype=np.float64)
    for i, w in enumerate(waveforms):
        w = torch.as_tensor(np.asarray(w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else w),
                            dtype=torch.float64)
        if w.ndim != 1:
            raise ValueError(f"mfcc_features: clip {i} must be 1-D (mono), got shape {tuple(w.shape)}")
        log_mel = fbank(w, cfg).numpy()  # [frames, n_mels]
        mfcc = dct(log_mel, type=2, axis=1, norm="ortho")[:, :n_mfcc]
        feats[i, :n_mfcc] = mfcc.mean(axis=0)
        feats[i, n_mfcc:] = mfcc.std(axis=0)
    return feats


def mfcc_logreg_baseline(
    train_wavs: Any,
    train_y: Any,
    test_wavs: Any,
    test_y: Any,
    *,
    valid_wavs: Any = None,
    valid_y: Any = None,
    sample_rate: int = 16000,
    n_mfcc: int = 40,
    seed: int = 0,
) -> dict:
    """MFCC statistics read out by the kit's fair linear read-out (:func:`eval.probes.fit_logreg`: standardisation +
    logistic regression, C chosen on valid when given), trained and tested in one call.

    Single-label ``[N]`` targets -> returns ``{"accuracy", "predictions"}``; binary ``[N, C]`` targets ->
    one-vs-rest, returns :func:`eval.metrics.multilabel_summary` plus ``"scores"``. Always includes ``"n_features"``,
    ``"C"`` and ``"model"`` (a description for the results JSON).
    """
    from eval.probes import fit_logreg

    xtr = mfcc_features(train_wavs, sample_rate, n_mfcc)
    xte = mfcc_features(test_wavs, sample_rate, n_mfcc)
    ytr, yte = np.asarray(train_y), np.asarray(test_y)
    if ytr.shape[0] != xtr.shape[0] or yte.shape[0] != xte.shape[0]:
        raise ValueError("mfcc_logreg_baseline: number of labels and clips differ")
    xva = mfcc_features(valid_wavs, sample_rate, n_mfcc) if valid_wavs is not None else None
    multilabel = ytr.ndim == 2
    readout = fit_logreg(xtr, ytr, xva, valid_y, seed=seed, multilabel=multilabel)
    out: dict = dict(readout.evaluate(xte, yte))
    if multilabel:
        out["scores"] = readout.scores(xte)
    else:
        out["predictions"] = readout.predict(xte)
    out["n_features"] = int(xtr.shape[1])
    out["C"] = readout.C
    out["model"] = f"MFCC({n_mfcc}, mean+std) + StandardScaler + LogisticRegression(C={readout.C})"
    return out
