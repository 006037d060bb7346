"""Classification metrics for the encoder and ALM harnesses.

Numpy arrays (or anything ``np.asarray`` accepts, torch CPU tensors included) go in, Python floats come out.

Conventions
-----------
* Single-label: ``y_true`` / ``y_pred`` are integer class indices of shape ``[N]``.
* Multi-label (AudioSet): ``targets`` is a binary matrix ``[N, C]`` and ``scores`` a real matrix ``[N, C]``
  (logits or probabilities: every metric here is rank-based, so either works).
* mAP / AUC follow the AudioSet convention: the per-class metric is averaged over classes that are
  *evaluable*. A class without any positive has no AP; a class without a positive or without a negative has no
  AUC. Such classes are skipped, never turned into NaN. The ``*_with_count`` variants also return how many classes
  were skipped, so a harness can report it.
* Bad shapes or values raise ``ValueError`` naming the argument and the reason.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "per_class_accuracy",
    "confusion_matrix",
    "average_precision",
    "mean_average_precision",
    "mean_average_precision_with_count",
    "roc_auc",
    "roc_auc_with_count",
    "d_prime",
    "equal_error_rate",
    "multilabel_summary",
]


# --------------------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------------------
def _as_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name}: expected a numeric array, got objects")
    return arr


def _labels_1d(x: Any, name: str) -> np.ndarray:
    arr = _as_array(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name}: class indices must be integers")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name}: class indices must be non-negative, found {arr.min()}")
    return arr.astype(np.int64, copy=False)


def _pair_1d(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = _labels_1d(y_true, "y_true")
    p = _labels_1d(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    if t.size == 0:
        raise ValueError("y_true is empty: accuracy of zero examples is undefined")
    return t, p


def _multilabel_pair(targets: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    t = _as_array(targets, "targets")
    s = _as_array(scores, "scores").astype(np.float64, copy=False)
    if t.ndim == 1:  # a single class given as a vector
        t = t[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if t.ndim != 2 or s.ndim != 2:
        raise ValueError(f"targets and scores must be [N, C]; got {t.shape} and {s.shape}")
    if t.shape != s.shape:
        raise ValueError(f"targets {t.shape} and scores {s.shape} differ in shape")
    if t.shape[0] == 0:
        raise ValueError("targets is empty")
    if not np.all((t == 0) | (t == 1)):
        raise ValueError("targets must be binary (0/1); soft targets are for training, not for mAP")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    return t.astype(bool), s


# --------------------------------------------------------------------------------------------------------------
# single-label
# --------------------------------------------------------------------------------------------------------------
def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of examples whose predicted class index equals the true one."""
    t, p = _pair_1d(y_true, y_pred)
    return float(np.mean(t == p))


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int | None = None) -> np.ndarray:
    """Counts ``M[i, j]`` = number of examples of true class ``i`` predicted as ``j`` (int64, ``[C, C]``).

    ``num_classes`` defaults to ``max(y_true, y_pred) + 1``.
    """
    t, p = _pair_1d(y_true, y_pred)
    c = int(max(t.max(), p.max())) + 1
    if num_classes is not None:
        if num_classes < c:
            raise ValueError(f"num_classes={num_classes} but a label {c - 1} occurs")
        c = int(num_classes)
    m = np.zeros((c, c), dtype=np.int64)
    np.add.at(m, (t, p), 1)
    return m


def per_class_accuracy(y_true: Any, y_pred: Any, num_classes: int | None = None) -> dict[int, float]:
    """Recall of each class that occurs in ``y_true``: ``{class_index: accuracy}``.

    Classes absent from ``y_true`` are left out (their accuracy is undefined) rather than reported as NaN.
    """
    m = confusion_matrix(y_true, y_pred, num_classes)
    support = m.sum(axis=1)
    return {int(i): float(m[i, i] / support[i]) for i in range(m.shape[0]) if support[i] > 0}


# --------------------------------------------------------------------------------------------------------------
# multi-label, rank based
# --------------------------------------------------------------------------------------------------------------
def average_precision(target: Any, score: Any) -> float:
    """Average precision of one class (``sklearn.metrics.average_precision_score``: step-wise, no interpolation).

    AP = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds in decreasing order; tied scores form one
    threshold. Raises ``ValueError`` if ``target`` has no positive.
    """
    t = _as_array(target, "target").astype(bool).ravel()
    s = _as_array(score, "score").astype(np.float64).ravel()
    if t.shape != s.shape:
        raise ValueError(f"target {t.shape} and score {s.shape} differ in shape")
    if not t.any():
        raise ValueError("average precision is undefined for a class without positives")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(t, s))


def _binary_auc(t: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC of one class that has both positives and negatives (ties count half, as in Mann-Whitney)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(t, s))


def mean_average_precision_with_count(targets: Any, scores: Any) -> tuple[float, int]:
    """``(mAP, n_skipped)``: mean AP over classes with at least one positive, and how many were skipped.

    Raises ``ValueError`` when no class has a positive.
    """
    t, s = _multilabel_pair(targets, scores)
    aps = [average_precision(t[:, c], s[:, c]) for c in range(t.shape[1]) if t[:, c].any()]
    if not aps:
        raise ValueError("mAP is undefined: no class has a positive example")
    return float(np.mean(aps)), t.shape[1] - len(aps)


def mean_average_precision(targets: Any, scores: Any) -> float:
    """Mean over classes of the per-class average precision (AudioSet convention).

    ``targets``: binary ``[N, C]``; ``scores``: ``[N, C]``. Classes without a positive are skipped (see
    :func:`mean_average_precision_with_count` for the count).
    """
    return mean_average_precision_with_count(targets, scores)[0]


def roc_auc_with_count(targets: Any, scores: Any) -> tuple[float, int]:
    """``(mean AUC, n_skipped)`` over classes having both a positive and a negative example."""
    t, s = _multilabel_pair(targets, scores)
    aucs = []
    for c in range(t.shape[1]):
        n_pos = int(t[:, c].sum())
        if 0 < n_pos < t.shape[0]:
            aucs.append(_binary_auc(t[:, c], s[:, c]))
    if not aucs:
        raise ValueError("AUC is undefined: no class has both positive and negative examples")
    return float(np.mean(aucs)), t.shape[1] - len(aucs)


def roc_auc(targets: Any, scores: Any) -> float:
    """Mean over classes of the ROC AUC (classes lacking positives or negatives are skipped).

    A 1-D ``targets``/``scores`` pair is treated as one binary class.
    """
    return roc_auc_with_count(targets, scores)[0]


def d_prime(auc: float) -> float:
    """Sensitivity index from an AUC: ``sqrt(2) * Phi^-1(auc)`` (as reported for AudioSet).

    ``auc`` must lie strictly inside (0, 1); 0 or 1 would give an infinite d-prime.
    """
    from scipy.stats import norm

    auc = float(auc)
    if not 0.0 < auc < 1.0:
        raise ValueError(f"d_prime needs 0 < auc < 1 (got {auc}); the value would be infinite")
    return float(math.sqrt(2.0) * norm.ppf(auc))


def multilabel_summary(targets: Any, scores: Any) -> dict[str, float | int]:
    """mAP, mean AUC, d-prime and the skipped-class counts in one dict (the AudioSet table)."""
    m_ap, skipped_ap = mean_average_precision_with_count(targets, scores)
    auc, skipped_auc = roc_auc_with_count(targets, scores)
    auc_c = min(max(auc, 1e-12), 1 - 1e-12)  # a perfect toy run must not crash the report
    return {
        "mAP": m_ap,
        "AUC": auc,
        "d_prime": d_prime(auc_c),
        "classes_skipped_mAP": skipped_ap,
        "classes_skipped_AUC": skipped_auc,
    }


# --------------------------------------------------------------------------------------------------------------
# spoof detection
# --------------------------------------------------------------------------------------------------------------
def equal_error_rate(labels: Any, scores: Any) -> float:
    """Equal error rate of a detector: the point on the ROC curve where FPR = FNR (= 1 - TPR).

    ``labels``: binary ``[N]`` (1 = positive / target class, e.g. bona fide); ``scores``: ``[N]``, higher means
    more positive. The ROC is ``sklearn.metrics.roc_curve`` at every distinct threshold; the crossing of FPR and FNR
    is found by linear interpolation between the two ROC points that bracket it, and the EER is the common value
    there.
    """
    t = _as_array(labels, "labels").ravel()
    s = _as_array(scores, "scores").astype(np.float64).ravel()
    if t.shape != s.shape:
        raise ValueError(f"labels {t.shape} and scores {s.shape} differ in shape")
    if not np.all((t == 0) | (t == 1)):
        raise ValueError("labels must be binary (0/1)")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    t = t.astype(bool)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("EER needs at least one positive and one negative example")

    from sklearn.metrics import roc_curve

    # ROC points at every distinct threshold, from the strictest (accept nothing) to the loosest (accept all)
    fpr, tpr, _ = roc_curve(t, s, drop_intermediate=False)
    fnr = 1.0 - tpr
    diff = fnr - fpr  # starts at 1, ends at -1, non-increasing
    idx = int(np.argmax(diff <= 0))  # first point where FPR >= FNR
    if diff[idx] == 0:
        return float(fpr[idx])
    i0, i1 = idx - 1, idx
    # linear interpolation of both curves between points i0 and i1; solve fnr(a) = fpr(a)
    a = diff[i0] / (diff[i0] - diff[i1])
    eer_fpr = fpr[i0] + a * (fpr[i1] - fpr[i0])
    eer_fnr = fnr[i0] + a * (fnr[i1] - fnr[i0])
    return float((eer_fpr + eer_fnr) / 2.0)
