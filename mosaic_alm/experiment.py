"""Does the audio encoder matter? Closed-ended QA of the ALM with (a) the AudioMosaic-pretrained encoder, (b) a
randomly initialised encoder of the same size, (c) no audio at all (same LLM + LoRA, same questions, text only).

Every variant runs the curriculum stages (the no-audio variant skips stage 1: it has no projector to train) with the
same seed, data and step budgets, then answers the held-out (test split) closed-ended questions. Writes a results JSON
(default ``results/alm_qa.json``) with per-qtype accuracies (normalised exact match of the greedy answer, option match,
and the option with the highest log-likelihood), per-stage training time, seed, versions and the resolved configs.

    mosaic-alm alm-experiment --data data/embedded-small --encoder runs/pretrain-tiny/encoder \\
        --steps 60,40,60,30 --max-test 300 --out results/alm_qa.json
    mosaic-alm alm-experiment --smoke     # CI: toy data, random encoders, a few steps

Variants can run in parallel processes (``--variants pretrained --out a.json`` ...) and be merged with ``--combine
a.json b.json c.json --out results/alm_qa.json``; ``--reuse`` continues from stages that already ran with the
identical config (a longer curriculum reuses a finished stage 1).

:func:`make_toy_data` writes a small real-audio instruction set (tones and noise) used by the tests and the smoke run.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

TOY_CLASSES = {"beep": "a high beep", "hum": "a low hum", "noise": "white noise"}


# --------------------------------------------------------------------------------------------------- toy data
def _toy_wave(cls: str, rng: np.random.Generator, sr: int = 16000) -> np.ndarray:
    n = int(sr * rng.uniform(0.6, 1.2))
    t = np.arange(n) / sr
    if cls == "beep":
        w = np.sin(2 * np.pi * rng.uniform(2500, 3500) * t)
    elif cls == "hum":
        w = np.sin(2 * np.pi * rng.uniform(100, 200) * t) + 0.3 * np.sin(2 * np.pi * 2 * 150 * t)
    else:
        w = rng.standard_normal(n)
    w = w / (np.abs(w).max() + 1e-9) * rng.uniform(0.2, 0.8)
    return w.astype(np.float32)


def make_toy_data(root: str | Path, per_class: dict | None = None, seed: int = 0) -> Path:
    """Write ``{root}/clips/*.wav`` and ``{root}/instructions/{train,valid,test}.json`` (closed + open records)."""
    import soundfile as sf

    root = Path(root)
    per_class = per_class or {"train": 6, "valid": 2, "test": 3}
    rng = np.random.default_rng(seed)
    opts = sorted(TOY_CLASSES)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    for split, n in per_class.items():
        recs = []
        for cls in opts:
            for i in range(n):
                cid = f"{split}_{cls}_{i}"
                rel = f"clips/{cid}.wav"
                if not (root / rel).exists():
                    sf.write(str(root / rel), _toy_wave(cls, rng), 16000)
                recs += [
                    {"id": f"{cid}_cls", "audio_id": cid, "audio_path": rel, "task": "toy", "qtype": "sound_event",
                     "instruction": f"Which sound is heard? Answer with one of: {', '.join(opts)}.", "input": "",
                     "output": cls, "open_ended": False, "options": opts},
                    {"id": f"{cid}_open", "audio_id": cid, "audio_path": rel, "task": "toy", "qtype": "caption",
                     "instruction": "Write a short caption for this audio.", "input": "",
                     "output": f"The sound of {TOY_CLASSES[cls]}.", "open_ended": True, "options": []},
                ]
        (root / "instructions").mkdir(exist_ok=True)
        (root / "instructions" / f"{split}.json").write_text(json.dumps(recs, indent=0))
    return root


# ------------------------------------------------------------------------------------------------- evaluation
def evaluate_closed(model, records: list[dict], batch_size: int = 16, max_new_tokens: int = 8) -> dict:
    """Greedy answers + highest-log-likelihood option for closed-ended records -> accuracies per qtype."""
    from .data import question_text
    from .infer import generate_answers, option_loglik

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
    try:
        from eval.qa import closed_ended_accuracy
        acc = closed_ended_accuracy(scored)
    except ImportError:  # eval/ is optional for this module; fall back to plain normalised exact match
        acc = _exact_match(scored)
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
    acc["questions"] = [dict(id=r["id"], qtype=r["qtype"], exact=_norm(p) == _norm(r["output"]), loglik=ll_ok.get(i))
                        for i, (r, p) in enumerate(zip(records, preds))]
    return acc


def _norm(s) -> str:
    """SQuAD normalisation (eval.qa's, where eval/ is installed)."""
    import re
    import string

    s = s if isinstance(s, str) else s[0]
    try:
        from eval.qa import normalise_answer
        return normalise_answer(s)
    except ImportError:
        pass
    s = "".join(c for c in s.lower() if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def paired_comparison(res_a: dict, res_b: dict, key: str = "exact", n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy difference a - b on the questions both answered, with a paired bootstrap 95% interval (questions
    resampled) and the exact two-sided McNemar (sign) test p-value on the discordant pairs."""
    from math import comb

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


def _exact_match(scored):
    per = defaultdict(list)
    for r in scored:
        per[r["qtype"]].append(_norm(r["prediction"]) == _norm(r["output"]))
    allv = [v for vs in per.values() for v in vs]
    return {"overall": {"exact_match": float(np.mean(allv)), "count": len(allv)},
            "per_qtype": {q: {"exact_match": float(np.mean(v)), "count": len(v)} for q, v in per.items()}}


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


# ---------------------------------------------------------------------------------------------------- driver
VARIANTS = {
    "pretrained": lambda enc: [f"audio.encoder={enc}"],
    "random": lambda enc: ["audio.encoder=random:tiny"],
    "no_audio": lambda enc: ["audio.enabled=false", "trainable.projector=false"],
}


def _versions() -> dict:
    import peft
    import transformers

    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "commit": commit, "machine": platform.machine(),
            "threads": torch.get_num_threads()}


def finished_stage(cfg: dict) -> dict | None:
    """The summary of an earlier run of exactly this resolved stage config (same folder, config and artifact), or
    None. Used by ``--reuse`` so a longer curriculum can continue from stages that already ran."""
    import yaml

    from .train import run_dir

    d = run_dir(cfg)
    try:
        old_cfg = yaml.safe_load((d / "config.yaml").read_text())
        summary = json.loads((d / "summary.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if old_cfg != json.loads(json.dumps(cfg)) or not (d / "artifact" / "meta.json").is_file():
        return None
    return summary


def run_variant(variant: str, encoder: str, data_root: str, steps: Sequence[int], common: Sequence[str],
                output_dir: str, seed: int, test_records: list[dict], eval_batch: int, random_size: str,
                reuse: bool = False) -> dict:
    from encoder.config import load_config

    from .artifact import load_alm
    from .train import STAGES, train_stage

    over = [f"data.root={data_root}", f"output_dir={output_dir}", f"name={variant}", f"seed={seed}", *common]
    over += [o.replace("random:tiny", f"random:{random_size}") for o in VARIANTS[variant](encoder)]
    stages = []
    first = True
    for path, n_steps in zip(STAGES, steps):
        cfg = load_config(path, over + [f"train.max_steps={n_steps}"])
        if variant == "no_audio":
            if cfg["stage"] == 1:
                continue  # nothing to train without a projector
            cfg["trainable"]["projector"] = False
        if first:
            cfg["train"]["init_from"] = None
            first = False
        if n_steps <= 0:
            continue
        summary = finished_stage(cfg) if reuse else None
        if summary is not None:
            print(f"== {variant}: stage {cfg['stage']} ({n_steps} steps) already ran with this config; reusing "
                  f"{summary['artifact']}", flush=True)
            summary["reused"] = True
        else:
            print(f"== {variant}: stage {cfg['stage']} ({n_steps} steps)", flush=True)
            summary = train_stage(cfg, quiet=False)
        stages.append(summary)
    model = load_alm(stages[-1]["artifact"])
    print(f"== {variant}: evaluating {len(test_records)} closed-ended test questions", flush=True)
    acc = evaluate_closed(model, test_records, batch_size=eval_batch)
    return {"stages": [{k: s.get(k) for k in ("stage", "steps", "train_records", "train_seconds", "seconds_per_step",
                                              "first_loss", "last_loss", "eval_loss", "artifact", "reused")}
                       for s in stages],
            "accuracy": acc}


def evaluate_stage(results_path: str | Path, stage: int, variants: Sequence[str], out: str | Path,
                   eval_batch: int = 16) -> dict:
    """Closed-ended accuracy of an earlier stage's artifacts of finished variants (same test questions)."""
    from .artifact import load_alm
    from .data import load_records

    res = json.loads(Path(results_path).read_text())
    test = sample_per_qtype(load_records(res["data"], "test", kind="closed"), res["test_questions"], res["seed"])
    out = Path(out)
    done = json.loads(out.read_text()) if out.is_file() else {"stage": stage, "variants": {}}
    for v in variants:
        st = [s for s in res["variants"][v]["stages"] if s["stage"] == stage]
        if not st:
            continue
        print(f"== {v}: evaluating stage {stage}", flush=True)
        done["variants"][v] = evaluate_closed(load_alm(st[0]["artifact"]), test, batch_size=eval_batch)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(done, indent=2))
        tmp.replace(out)
    return done


SAME_EXPERIMENT = ("data", "seed", "steps_per_stage", "test_questions", "test_qtypes", "overrides",
                   "random_encoder_size")


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
    _print_summary(merged)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(merged, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mosaic-alm alm-experiment", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/embedded-small")
    ap.add_argument("--encoder", default="runs/pretrain-tiny/encoder", help="the pretrained AudioMosaic folder")
    ap.add_argument("--random-size", default=None, help="size preset of the random encoder (default: the "
                                                        "pretrained encoder's)")
    ap.add_argument("--steps", default="60,40,60,30", help="optimizer steps of stages 1,2,3,4")
    ap.add_argument("--max-test", type=int, default=300, help="closed-ended test questions (spread over qtypes)")
    ap.add_argument("--variants", default="pretrained,random,no_audio")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--output-dir", default="runs/alm-exp")
    ap.add_argument("--out", default="results/alm_qa.json")
    ap.add_argument("--merge", action="store_true", help="keep the variants already in --out (same data, steps and "
                                                         "seed), run only the ones asked for")
    ap.add_argument("--eval-stage", type=int, default=0, help="only evaluate stage N's artifacts of the variants "
                                                                  "in --out, writing --eval-out")
    ap.add_argument("--eval-out", default=None)
    ap.add_argument("--reuse", action="store_true", help="skip stages whose run folder already holds a finished run "
                                                         "of the identical resolved config (e.g. to extend a run)")
    ap.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                    help="merge results files of the same experiment (each variant run on its own, e.g. in "
                         "parallel) into --out, then exit")
    ap.add_argument("--markdown", action="store_true", help="print --out's per-question-type table as Markdown, exit")
    ap.add_argument("--smoke", action="store_true", help="toy data, random encoders, 3 steps per stage")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every stage (e.g. train.batch_size=4)")
    args = ap.parse_args(argv)

    from .data import load_records

    if args.combine:
        combine_results(args.combine, args.out)
        return 0
    if args.markdown:
        print(markdown_table(json.loads(Path(args.out).read_text())))
        return 0
    if args.eval_stage:
        evaluate_stage(args.out, args.eval_stage, args.variants.split(","),
                       args.eval_out or str(Path(args.out).with_name(f"{Path(args.out).stem}_stage{args.eval_stage}.json")),
                       args.eval_batch)
        return 0
    common = list(args.overrides)
    if args.smoke:
        args.data = str(make_toy_data(Path(args.output_dir) / "toy-data"))
        args.encoder, args.steps, args.max_test = "random:tiny", "3,3,3,3", 9
        common += ["data.qtypes=null", "prompt.system=''"]
    steps = [int(s) for s in args.steps.split(",")]
    if len(steps) != 4:
        raise SystemExit("--steps needs four comma-separated numbers")
    random_size = args.random_size
    if random_size is None:
        random_size = "tiny"
        if not args.encoder.startswith("random:") and (Path(args.encoder) / "config.json").is_file():
            random_size = json.loads((Path(args.encoder) / "config.json").read_text()).get("size", "tiny")
    test = load_records(args.data, "test", kind="closed")
    test = sample_per_qtype(test, args.max_test, args.seed)
    results = {"experiment": "alm_closed_qa_encoder_ablation", "data": args.data, "encoder": args.encoder,
               "random_encoder_size": random_size, "seed": args.seed, "steps_per_stage": steps,
               "overrides": common, "test_questions": len(test),
               "test_qtypes": {q: sum(r["qtype"] == q for r in test) for q in sorted({r["qtype"] for r in test})},
               "versions": _versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "variants": {}}
    out = Path(args.out)
    if args.merge and out.is_file():
        old = json.loads(out.read_text())
        same = all(old.get(k) == results[k] for k in ("data", "seed", "steps_per_stage", "test_questions", "overrides"))
        if not same:
            raise SystemExit(f"--merge: {out} was made with other data/seed/steps/test set; not merging")
        results["variants"] = {k: v for k, v in old["variants"].items() if k not in args.variants.split(",")}
        results["encoder"] = old["encoder"] if args.encoder.startswith("random:") else args.encoder
    for v in args.variants.split(","):
        t0 = time.perf_counter()
        results["variants"][v] = run_variant(v, args.encoder, args.data, steps, common, args.output_dir, args.seed,
                                             test, args.eval_batch, random_size, args.reuse)
        results["variants"][v]["total_seconds"] = round(time.perf_counter() - t0, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(out)
    results["comparisons"] = compare_variants(results)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    _print_summary(results)
    return 0


def markdown_table(results: dict) -> str:
    """Per-question-type accuracy of every variant (exact match / highest-log-likelihood option) as Markdown."""
    vs = list(results["variants"])
    qtypes = sorted({q for v in vs for q in results["variants"][v]["accuracy"]["per_qtype"]})
    lines = ["| question type | n | " + " | ".join(vs) + " |", "|---|---|" + "---|" * len(vs)]

    def cell(d):
        ll = d.get("loglik_option")
        return f"{d['exact_match']:.3f} / " + (f"{ll:.3f}" if ll is not None else "-")

    for q in qtypes + ["overall"]:
        row = [results["variants"][v]["accuracy"]["per_qtype"].get(q) if q != "overall" else
               results["variants"][v]["accuracy"]["overall"] for v in vs]
        n = next((d["count"] for d in row if d), 0)
        lines.append(f"| {'**overall**' if q == 'overall' else q} | {n} | " +
                     " | ".join(cell(d) if d else "-" for d in row) + " |")
    return "\n".join(lines)


def _print_summary(results: dict) -> None:
    for v, r in results["variants"].items():
        a = r["accuracy"]["overall"]
        print(f"{v:<11} exact {a['exact_match']:.3f}  option {a.get('option_match', float('nan')):.3f}  "
              f"loglik {a.get('loglik_option') or float('nan'):.3f}")
    for name, c in results.get("comparisons", {}).items():
        for k, x in c.items():
            print(f"{name} ({k}): {x['difference']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}] "
                  f"McNemar p={x['mcnemar_p']:.3g} over {x['questions']} questions")


if __name__ == "__main__":
    sys.exit(main())
