"""eval.metrics against sklearn / scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from scipy.stats import norm
from sklearn import metrics as skm

from eval import metrics


def test_accuracy_and_confusion_match_sklearn():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, 200)
    p = np.where(rng.random(200) < 0.6, t, rng.integers(0, 5, 200))
    assert metrics.accuracy(t, p) == pytest.approx(skm.accuracy_score(t, p))
    np.testing.assert_array_equal(metrics.confusion_matrix(t, p), skm.confusion_matrix(t, p, labels=range(5)))
    pca = metrics.per_class_accuracy(t, p)
    recall = skm.recall_score(t, p, average=None, labels=range(5))
    assert pca == pytest.approx({i: recall[i] for i in range(5)})


def test_per_class_accuracy_skips_absent_classes():
    # class 1 never occurs as a true label: it is left out, not NaN
    assert metrics.per_class_accuracy([0, 0, 2], [0, 1, 2], num_classes=3) == {0: 0.5, 2: 1.0}
    assert metrics.confusion_matrix([0, 1], [1, 1], num_classes=4).shape == (4, 4)


def test_single_label_validation():
    with pytest.raises(ValueError, match="differ in length"):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        metrics.accuracy([], [])
    with pytest.raises(ValueError, match="1-D"):
        metrics.accuracy(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="num_classes"):
        metrics.confusion_matrix([0, 3], [0, 1], num_classes=2)


def _sk_map(t, s):
    keep = t.sum(0) > 0
    return float(np.mean([skm.average_precision_score(t[:, c], s[:, c]) for c in np.where(keep)[0]]))


def test_map_and_auc_match_sklearn_and_skip_empty_classes():
    rng = np.random.default_rng(1)
    t = (rng.random((300, 8)) < 0.2).astype(int)
    t[:, 5] = 0  # a class without positives: skipped
    s = t * 0.8 + rng.normal(size=t.shape)
    m, skipped = metrics.mean_average_precision_with_count(t, s)
    assert skipped == 1
    assert m == pytest.approx(_sk_map(t, s), abs=1e-12)
    assert metrics.mean_average_precision(t, s) == m
    keep = [c for c in range(8) if 0 < t[:, c].sum() < len(t)]
    auc_sk = np.mean([skm.roc_auc_score(t[:, c], s[:, c]) for c in keep])
    auc, skipped_auc = metrics.roc_auc_with_count(t, s)
    assert auc == pytest.approx(auc_sk, abs=1e-12)
    assert skipped_auc == 1
    summary = metrics.multilabel_summary(t, s)
    assert summary["d_prime"] == pytest.approx(math.sqrt(2) * norm.ppf(auc_sk))
    assert not any(isinstance(v, float) and math.isnan(v) for v in summary.values())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4)), min_size=2, max_size=25))
def test_average_precision_and_auc_with_ties_match_their_definitions(pairs):
    t = np.array([p[0] for p in pairs], dtype=bool)
    s = np.array([p[1] for p in pairs], dtype=float)  # few distinct values: many ties
    if t.sum() == 0:
        with pytest.raises(ValueError):
            metrics.average_precision(t, s)
        return
    # AP = mean over positives of the precision among all clips scored at least as high (a tie is one threshold)
    ap = np.mean([t[s >= x].sum() / (s >= x).sum() for x in s[t]])
    assert metrics.average_precision(t, s) == pytest.approx(ap, abs=1e-12)
    if t.sum() < len(t):  # AUC = P(positive outscores negative), a tie counting one half
        pos, neg = s[t][:, None], s[~t][None, :]
        auc = np.mean((pos > neg) + 0.5 * (pos == neg))
        assert metrics.roc_auc(t, s) == pytest.approx(auc, abs=1e-12)


def test_map_hand_computed():
    # ranking P N P: AP = (1/1 + 2/3) / 2
    assert metrics.mean_average_precision([[1], [0], [1]], [[0.9], [0.8], [0.7]]) == pytest.approx(5 / 6)
    # tied scores are one threshold: P | P N N | N N gives AP = (1/1 + 2/4) / 2 and AUC = (4 + 2 + 2 * 0.5) / 8
    t, s = [1, 1, 0, 0, 0, 0], [3, 2, 2, 2, 1, 1]
    assert metrics.average_precision(t, s) == pytest.approx(3 / 4)
    assert metrics.roc_auc(t, s) == pytest.approx(7 / 8)


def test_multilabel_validation():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="binary"):
        metrics.mean_average_precision(np.full((3, 2), 0.5), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no class has a positive"):
        metrics.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc([[1], [0]], [[np.nan], [0.0]])


def test_d_prime():
    assert metrics.d_prime(0.5) == pytest.approx(0.0)
    assert metrics.d_prime(norm.cdf(1.0)) == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="infinite"):
        metrics.d_prime(1.0)


def test_eer_hand_computed():
    assert metrics.equal_error_rate([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert metrics.equal_error_rate([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert metrics.equal_error_rate([1, 0, 1, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.3, 0.2]) == pytest.approx(1 / 3)
    # crossing inside a segment: ROC points (fpr, fnr) (1/3, 1/2) -> (1/3, 0); interpolation gives 1/3
    assert metrics.equal_error_rate([1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.5]) == pytest.approx(1 / 3)


def test_eer_matches_roc_curve_interpolation():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 500)
    scores = labels * 1.0 + rng.normal(size=500)
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    ref = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert metrics.equal_error_rate(labels, scores) == pytest.approx(ref, abs=1e-9)


def test_eer_validation():
    with pytest.raises(ValueError, match="positive and one negative"):
        metrics.equal_error_rate([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="binary"):
        metrics.equal_error_rate([2, 0], [0.1, 0.2])
