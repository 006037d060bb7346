"""The few-label protocol (eval/few_label.py) and its section in the reports."""
from __future__ import annotations

import numpy as np
import pytest

from eval.few_label import draw_per_class, few_label_curve
from eval.probe_tables import few_label_section


def test_draws_take_k_per_class_nested_and_reproducible():
    y = np.repeat(np.arange(4), [10, 10, 10, 3])
    for draw in range(3):
        prev = set()
        for k in (1, 5, 10):
            idx = draw_per_class(y, k, draw, seed=0)
            assert np.bincount(y[idx]).tolist() == [k, k, k, min(k, 3)]
            assert prev <= set(idx.tolist())  # the k-label clips hold the fewer-label ones
            prev = set(idx.tolist())
        assert np.array_equal(draw_per_class(y, 5, draw, 0), draw_per_class(y, 5, draw, 0))
    assert not np.array_equal(draw_per_class(y, 5, 0, 0), draw_per_class(y, 5, 1, 0))
    with pytest.raises(ValueError, match=">= 1"):
        draw_per_class(y, 0, 0)


def test_the_curve_rises_with_labels_on_separable_features():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16)) * 1.5

    def split(n):
        y = np.repeat(np.arange(5), n)
        return centers[y] + rng.normal(size=(len(y), 16)), y

    curve = few_label_curve(split(40), split(10), {"test": split(30)}, [1, 5, 20], draws=3, seed=0)
    assert list(curve) == ["1", "5", "20"]
    acc = {k: v["test"]["accuracy"] for k, v in curve.items()}
    assert all(len(a["runs"]) == 3 and a["std"] >= 0 for a in acc.values())
    assert acc["1"]["mean"] < acc["20"]["mean"] and acc["20"]["mean"] > 0.9
    assert acc["1"]["mean"] > 0.2  # above the 0.2 of chance even from one clip a class


def test_the_report_section_has_a_table_and_a_curve_per_task():
    acc = {"accuracy": {"mean": 0.5, "std": 0.1, "runs": [0.4, 0.5, 0.6]}}
    one = {"accuracy": {"mean": 0.7, "std": 0.0, "runs": [0.7]}}
    few = {"draws": 3, "tasks": {t: {e: {"1": {"test": acc}, "all": {"test": one}} for e in ("mfcc_logreg", "a")}
                                 for t in ("kw", "env")}}
    title, items = few_label_section(few)
    assert title == "Few labels"
    table = items[1]
    assert table["a"]["kw 1"] == "0.500 ± 0.100 (n=3)" and table["a"]["env all"] == "0.700 (1 fit)"
    assert len(items) == 2 + 2  # note, table, one figure per task
