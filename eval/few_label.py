"""The few-label protocol: the fair linear read-out (:func:`eval.probes.fit_logreg`) fitted on ``k`` labelled training
clips per class, for several ``k`` and several draws of the labelled subset, scored on every test split.

Draw ``d`` permutes each class's training clips with an RNG seeded by (seed, d) and keeps the first ``k`` of each, so
the subsets are nested (the 1-label clips are among the 5-label ones) and every encoder and the MFCC baseline are
read out from the same clips (paired). A class with fewer than ``k`` training clips gives all it has. ``C`` is chosen
on the whole valid split, for every method alike (the same convex fit as the all-label read-out; a few-label user
would tune it on less).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from eval.probes import fit_logreg


def draw_per_class(y: np.ndarray, k: int, draw: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``k`` clips of each class of ``y`` (all of a class with fewer), draw ``draw``."""
    y = np.asarray(y)
    if k < 1:
        raise ValueError(f"labels per class must be >= 1, got {k}")
    rng = np.random.default_rng([seed, draw])
    picks = [rng.permutation(np.flatnonzero(y == c))[:k] for c in np.unique(y)]
    return np.sort(np.concatenate(picks))


def runs_summary(xs: Sequence[float]) -> dict:
    """``{"mean", "std" (ddof 1; 0 for one run), "runs"}`` of repeated measurements (the shape the encoder
    evaluation's JSON and :func:`eval.results.mean_std` read)."""
    a = np.asarray(xs, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "runs": [float(v) for v in a]}


def few_label_curve(train: tuple[Any, Any], valid: tuple[Any, Any] | None, tests: Mapping[str, tuple[Any, Any]],
                    labels_per_class: Sequence[int], draws: int, seed: int = 0) -> dict:
    """``{str(k): {test split: {"accuracy": mean, std over draws, runs}}}`` for each ``k`` in ``labels_per_class``;
    ``train`` / ``valid`` / ``tests[split]``: (features ``[N, D]``, labels ``[N]``)."""
    xtr, ytr = np.asarray(train[0]), np.asarray(train[1])
    vx, vy = (None, None) if valid is None else (np.asarray(valid[0]), np.asarray(valid[1]))
    out: dict = {}
    for k in labels_per_class:
        accs: dict[str, list[float]] = {role: [] for role in tests}
        for d in range(draws):
            idx = draw_per_class(ytr, int(k), d, seed)
            readout = fit_logreg(xtr[idx], ytr[idx], vx, vy, seed=seed)
            for role, (x, y) in tests.items():
                accs[role].append(readout.evaluate(np.asarray(x), np.asarray(y))["accuracy"])
        out[str(k)] = {role: {"accuracy": runs_summary(a)} for role, a in accs.items()}
    return out
