"""Closed-ended QA of an ALM: greedy answers (normalised exact match, option match) and the option with the highest
log-likelihood, overall and per question type, with per-question outcomes so two models can be compared pairwise
(:mod:`eval.stats`)."""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from mosaic_alm.data import question_text
from mosaic_alm.generation import generate_answers, option_loglik

from .qa import closed_ended_accuracy, normalise_answer


def evaluate_closed(model, records: list[dict], batch_size: int = 16, max_new_tokens: int = 8) -> dict:
    """Greedy answers + highest-log-likelihood option for closed-ended records -> accuracies per qtype."""

    audios = [r["audio_path"] if model.cfg.audio.enabled else None for r in records]
    qs = [question_text(r) for r in records]
    t0 = time.perf_counter()
    preds = generate_answers(model, audios, qs, batch_size=batch_size, max_new_tokens=max_new_tokens)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with_opts = [i for i, r in enumerate(records) if r.get("options")]
    best = option_loglik(model, [audios[i] for i in with_opts], [qs[i] for i in with_opts],
                         [records[i]["options"] for i in with_opts])
    ll_s = time.perf_counter() - t0
    ll_ok = {i: records[i]["options"][b] == records[i]["output"] for i, b in zip(with_opts, best)}
    scored = [dict(qtype=r["qtype"], prediction=p, output=r["output"], options=r.get("options") or None)
              for r, p in zip(records, preds)]
    acc = closed_ended_accuracy(scored)
    per = defaultdict(list)
    for i, ok in ll_ok.items():
        per[records[i]["qtype"]].append(ok)
    acc["overall"]["loglik_option"] = float(np.mean(list(ll_ok.values()))) if ll_ok else None
    for q, v in per.items():
        acc["per_qtype"].setdefault(q, {})["loglik_option"] = float(np.mean(v))
    acc["generation_seconds"] = round(gen_s, 2)
    acc["loglik_seconds"] = round(ll_s, 2)
    acc["examples"] = [dict(id=r["id"], question=q, prediction=p, label=r["output"])
                       for r, q, p in list(zip(records, qs, preds))[:12]]
    # per-question outcomes: variants answer the same questions, so differences can be tested pairwise
    acc["questions"] = [dict(id=r["id"], qtype=r["qtype"], exact=normalise_answer(p) == normalise_answer(r["output"]),
                             loglik=ll_ok.get(i))
                        for i, (r, p) in enumerate(zip(records, preds))]
    return acc


def sample_per_qtype(records: list[dict], max_total: int, seed: int) -> list[dict]:
    """Up to ``max_total`` records, spread evenly over question types (deterministic)."""
    if not max_total or len(records) <= max_total:
        return records
    by = defaultdict(list)
    for r in records:
        by[r["qtype"]].append(r)
    rng = np.random.default_rng(seed)
    per = max(1, max_total // len(by))
    out = []
    for q in sorted(by):
        rs = by[q]
        idx = rng.permutation(len(rs))[:per]
        out += [rs[i] for i in sorted(idx)]
    return out
