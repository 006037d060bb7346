"""Paired comparisons of two models answering the same questions: accuracy difference with a paired bootstrap
interval and the exact McNemar test."""
from __future__ import annotations

from math import comb

import numpy as np


def paired_comparison(res_a: dict, res_b: dict, key: str = "exact", n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy difference a - b on the questions both answered, with a paired bootstrap 95% interval (questions
    resampled) and the exact two-sided McNemar (sign) test p-value on the discordant pairs."""
    qa = {q["id"]: q[key] for q in res_a["questions"] if q.get(key) is not None}
    qb = {q["id"]: q[key] for q in res_b["questions"] if q.get(key) is not None}
    ids = sorted(set(qa) & set(qb))
    if not ids:
        raise ValueError("paired_comparison: the two results share no questions")
    a = np.array([qa[i] for i in ids], dtype=float)
    b = np.array([qb[i] for i in ids], dtype=float)
    d = a - b
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    only_a, only_b = int((d > 0).sum()), int((d < 0).sum())
    n = only_a + only_b
    p = min(1.0, 2 * sum(comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n) if n else 1.0
    return {"metric": key, "questions": len(ids), "a": float(a.mean()), "b": float(b.mean()),
            "difference": float(d.mean()), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "only_a_right": only_a, "only_b_right": only_b, "mcnemar_p": float(p)}
