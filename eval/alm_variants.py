"""The encoder ablation's results (:mod:`recipes.alm_experiment`): the variants (pretrained / random encoder / no
audio) and their overrides, the per-stage budgets, merging per-variant results files, pooling seeds, the paired
comparisons and the per-question-type table."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eval.results import mean_std
from eval.stats import paired_comparison
from mosaic_core.config import ConfigError
from mosaic_core.io import atomic_write_json
from mosaic_core.tables import markdown_table

# each variant's stage overrides, given the pretrained encoder folder
VARIANTS = {
    "pretrained": lambda enc: [f"audio.encoder={enc}"],
    "random": lambda enc: ["audio.encoder=random:tiny"],
    "no_audio": lambda enc: ["audio.enabled=false", "trainable.projector=false"],
}

# the results' keys that make two results files one experiment (so they may be merged or pooled)
SAME_EXPERIMENT = ("data", "seed", "steps_per_stage", "examples_per_stage", "test_questions", "test_qtypes",
                   "overrides", "random_encoder_size")


def stage_budget(text: str, flag: str) -> list[int]:
    """``"a,b,c,d"`` -> the four stages' budgets (steps or examples); anything else is one line naming ``flag``."""
    try:
        out = [int(s) for s in text.split(",")]
    except ValueError:
        out = []
    if len(out) != 4 or min(out) < 0:
        raise ConfigError(f"{flag} needs four comma-separated non-negative numbers (stages 1-4), got {text!r}")
    return out


def compare_variants(results: dict) -> dict:
    """(a) pretrained vs (b) random and vs (c) no audio, for exact match and log-likelihood option choice."""
    v = results["variants"]
    out = {}
    for other in ("random", "no_audio"):
        if "pretrained" in v and other in v and "questions" in v["pretrained"]["accuracy"] \
                and "questions" in v[other]["accuracy"]:
            out[f"pretrained_vs_{other}"] = {k: paired_comparison(v["pretrained"]["accuracy"], v[other]["accuracy"], k)
                                             for k in ("exact", "loglik")}
    return out


def combine_results(paths: Sequence[str | Path], out: str | Path) -> dict:
    """Merge per-variant results files into one; they must describe the same experiment (data, seed, steps, test
    questions, overrides) and hold different variants."""
    merged = None
    for p in paths:
        r = json.loads(Path(p).read_text())
        if merged is None:
            merged = r
            continue
        diff = [k for k in SAME_EXPERIMENT if r.get(k) != merged.get(k)]
        if diff:
            raise SystemExit(f"--combine: {p} differs from {paths[0]} in {diff}; not the same experiment")
        both = sorted(set(r["variants"]) & set(merged["variants"]))
        if both:
            raise SystemExit(f"--combine: variant(s) {both} appear in more than one file ({p})")
        if not r.get("encoder", "").startswith("random:"):
            merged["encoder"] = r["encoder"]
        merged["variants"].update(r["variants"])
    if merged is None:
        raise SystemExit("--combine: no files given")
    merged["combined_from"] = [str(p) for p in paths]
    merged["comparisons"] = compare_variants(merged)
    print_variants_summary(merged)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, merged)
    print(f"wrote {out}")
    return merged


def summarise_seeds(paths: Sequence[str | Path], out: str | Path) -> dict:
    """Results files of the same experiment with different seeds -> per variant and question type the mean ± std
    of exact match over seeds, and pretrained vs random / no audio per question type with the questions of every
    seed pooled (paired bootstrap interval and McNemar test; a question is identified by (seed, id))."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if len({r["seed"] for r in runs}) != len(runs):
        raise SystemExit("--seeds-summary: give one results file per seed (two share a seed)")
    for p, r in zip(paths[1:], runs[1:]):
        diff = [k for k in SAME_EXPERIMENT if k not in ("seed", "test_qtypes") and r.get(k) != runs[0].get(k)]
        if diff:
            raise SystemExit(f"--seeds-summary: {p} differs from {paths[0]} in {diff}; not the same experiment")
    variants = [v for v in runs[0]["variants"] if all(v in r["variants"] for r in runs)]
    qtypes = sorted({q for r in runs for v in variants for q in r["variants"][v]["accuracy"]["per_qtype"]})
    table = {}
    for v in variants:
        for q in [*qtypes, "overall"]:
            vals = [(r["variants"][v]["accuracy"]["overall"] if q == "overall" else
                     r["variants"][v]["accuracy"]["per_qtype"].get(q, {})).get("exact_match") for r in runs]
            vals = [x for x in vals if x is not None]
            table.setdefault(v, {})[q] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1))
                                          if len(vals) > 1 else 0.0, "runs": vals}

    def pooled(v: str, q: str | None) -> dict:
        qs = [dict(x, id=f"{r['seed']}:{x['id']}") for r in runs for x in r["variants"][v]["accuracy"]["questions"]
              if q is None or x["qtype"] == q]
        return {"questions": qs}

    comparisons = {}
    for other in ("random", "no_audio"):
        if "pretrained" in variants and other in variants:
            comparisons[f"pretrained_vs_{other}"] = {
                q or "overall": paired_comparison(pooled("pretrained", q), pooled(other, q), "exact")
                for q in [None, *qtypes]}
    summary = {"seeds": [r["seed"] for r in runs], "files": [str(p) for p in paths],
               **{k: runs[0].get(k) for k in SAME_EXPERIMENT if k not in ("seed", "test_qtypes")},
               "exact_match": table, "comparisons": comparisons}
    rows = [[q, *(mean_std(table[v][q]) for v in variants)]
            for q in [*qtypes, "overall"]]
    print(markdown_table(["question type", *variants], rows))
    for name, by_q in comparisons.items():
        c = by_q["overall"]
        print(f"{name}: {c['difference']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}], "
              f"McNemar p {c['mcnemar_p']:.3g} ({c['questions']} questions)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, summary)
    print(f"wrote {out}")
    return summary


def variants_table(results: dict) -> str:
    """Per-question-type accuracy of every variant (exact match / highest-log-likelihood option) as Markdown."""
    vs = list(results["variants"])
    qtypes = sorted({q for v in vs for q in results["variants"][v]["accuracy"]["per_qtype"]})

    def cell(d):
        if not d:
            return "-"
        ll = d.get("loglik_option")
        return f"{d['exact_match']:.3f} / " + (f"{ll:.3f}" if ll is not None else "-")

    rows = []
    for q in qtypes + ["overall"]:
        accs = [results["variants"][v]["accuracy"]["per_qtype"].get(q) if q != "overall" else
                results["variants"][v]["accuracy"]["overall"] for v in vs]
        n = next((d["count"] for d in accs if d), 0)
        rows.append(["**overall**" if q == "overall" else q, str(n)] + [cell(d) for d in accs])
    return markdown_table(["question type", "n", *vs], rows)


def print_variants_summary(results: dict) -> None:
    for v, r in results["variants"].items():
        a = r["accuracy"]["overall"]
        print(f"{v:<11} exact {a['exact_match']:.3f}  option {a.get('option_match', float('nan')):.3f}  "
              f"loglik {a.get('loglik_option') or float('nan'):.3f}")
    for name, c in results.get("comparisons", {}).items():
        for k, x in c.items():
            print(f"{name} ({k}): {x['difference']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}] "
                  f"McNemar p={x['mcnemar_p']:.3g} over {x['questions']} questions")
