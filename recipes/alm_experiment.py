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

``--smoke`` runs on :func:`mosaic_alm.toy.make_toy_data` (tones and noise), random encoders and 3 steps per stage.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from eval.alm_qa import evaluate_closed, sample_per_qtype
from eval.alm_variants import (
    SAME_EXPERIMENT,
    VARIANTS,
    combine_results,
    compare_variants,
    print_variants_summary,
    stage_budget,
    summarise_seeds,
    variants_table,
)
from mosaic_alm.artifact import load_alm
from mosaic_alm.data import load_records
from mosaic_alm.stage_config import (
    STAGES,
    StageConfig,
    check_stage_config,
    run_dir,
    stage_config_dict,
    stage_sources,
)
from mosaic_alm.toy import make_toy_data
from mosaic_core.config import load_config
from mosaic_core.io import atomic_write_json
from mosaic_core.provenance import provenance

from .cli import run_job


def finished_stage(cfg: StageConfig) -> dict | None:
    """The summary of an earlier run of exactly this checked stage config (same folder, config with every default,
    and artifact, and for a first stage the same encoder weights in the encoder folder), or None. Used by
    ``--reuse`` so a longer curriculum can continue from stages that already ran, and a re-run skips them."""
    import yaml

    d = run_dir(cfg)
    try:
        old_cfg = yaml.safe_load((d / "config.yaml").read_text())
        summary = json.loads((d / "summary.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if old_cfg != stage_config_dict(cfg) or not (d / "artifact" / "meta.json").is_file():
        return None
    if any(summary.get(k) != v for k, v in stage_sources(cfg).items()):  # encoder pretrained again, stage N-1
        return None                                                        # trained anew, ...
    return summary


def _artifact_stamp(artifact: str | Path) -> int | None:
    meta = Path(artifact) / "meta.json"
    return meta.stat().st_mtime_ns if meta.is_file() else None


def run_variant(variant: str, encoder: str, data_root: str, steps: Sequence[int], common: Sequence[str],
                output_dir: str, seed: int, test_records: list[dict], eval_batch: int, random_size: str,
                reuse: bool = False, examples: Sequence[int] | None = None, previous: dict | None = None) -> dict:
    """Train the variant's stages (``steps`` optimizer steps, or ``examples`` training examples, per stage) and
    evaluate its last artifact. With ``reuse``, stages that already ran with the identical config are kept (never
    after a stage that trained anew) and, when every stage was kept, so is ``previous``'s evaluation of the same
    artifact."""
    over = [f"data.root={data_root}", f"output_dir={output_dir}", f"name={variant}", f"seed={seed}", *common]
    over += [o.replace("random:tiny", f"random:{random_size}") for o in VARIANTS[variant](encoder)]
    stages = []
    first, upstream_fresh = True, False
    budgets = [("examples", n) for n in examples] if examples else [("steps", n) for n in steps]
    for path, (unit, n_steps) in zip(STAGES, budgets):
        stage_over = over + ([f"train.examples={n_steps}", "train.max_steps=0"] if unit == "examples" else
                             [f"train.max_steps={n_steps}"])
        if variant == "no_audio" and load_config(path, stage_over)["stage"] == 1:
            continue  # nothing to train without a projector
        if n_steps <= 0:
            continue  # a stage with no budget is skipped; the next one that trains starts fresh if it is the first
        if first:
            stage_over.append("train.init_from=null")
            first = False
        cfg = check_stage_config(load_config(path, stage_over))
        summary = finished_stage(cfg) if reuse and not upstream_fresh else None
        if summary is not None:
            print(f"== {variant}: stage {cfg.stage} ({n_steps} {unit}) already ran with this config; skip, "
                  f"reusing {summary['artifact']}", flush=True)
            summary["reused"] = True
        else:
            print(f"== {variant}: stage {cfg.stage} ({n_steps} {unit})", flush=True)
            t0 = time.perf_counter()
            if run_job("train-alm", ["--config", str(path), *stage_over]) != 0:
                raise SystemExit(f"alm-experiment: train-alm failed for {variant}, stage {cfg.stage}")
            summary = json.loads((run_dir(cfg) / "summary.json").read_text())
            summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
            upstream_fresh = True
        stages.append(summary)
    stamp = _artifact_stamp(stages[-1]["artifact"])
    keep = ("stage", "steps", "examples", "train_records", "train_seconds", "seconds_per_step", "wall_seconds",
            "first_loss", "last_loss", "eval_loss", "artifact", "reused", "clips_encoded")
    result = {"stages": [{k: s.get(k) for k in keep} for s in stages], "artifact_stamp": stamp}
    if previous is not None and not upstream_fresh and previous.get("artifact_stamp") == stamp \
            and [s["artifact"] for s in previous.get("stages", [])] == [s["artifact"] for s in stages]:
        print(f"== {variant}: its last artifact was evaluated on these test questions already; skip", flush=True)
        return dict(result, accuracy=previous["accuracy"], evaluation_reused=True)
    model = load_alm(stages[-1]["artifact"])
    print(f"== {variant}: evaluating {len(test_records)} closed-ended test questions", flush=True)
    result["accuracy"] = evaluate_closed(model, test_records, batch_size=eval_batch)
    return result


def evaluate_stage(results_path: str | Path, stage: int, variants: Sequence[str], out: str | Path,
                   eval_batch: int = 16) -> dict:
    """Closed-ended accuracy of an earlier stage's artifacts of finished variants (same test questions)."""
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
        atomic_write_json(out, done)
    return done


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mosaic-alm alm-experiment", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/embedded-small")
    ap.add_argument("--encoder", default="runs/pretrain-tiny/encoder", help="the pretrained AudioMosaic folder")
    ap.add_argument("--random-size", default=None, help="size preset of the random encoder (default: the "
                                                        "pretrained encoder's)")
    ap.add_argument("--steps", default="60,40,60,30", help="optimizer steps of stages 1,2,3,4")
    ap.add_argument("--examples", default=None, help="training examples of stages 1,2,3,4 (instead of --steps): "
                                                     "steps = ceil(examples / (batch x accumulation))")
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
    ap.add_argument("--seeds-summary", nargs="+", default=None, metavar="JSON",
                    help="results files of one experiment run with different --seed: mean ± std per question type "
                         "and pooled paired comparisons into --out, then exit")
    ap.add_argument("--markdown", action="store_true", help="print --out's per-question-type table as Markdown, exit")
    ap.add_argument("--smoke", action="store_true", help="toy data, random encoders, 3 steps per stage")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every stage (e.g. train.batch_size=4)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.combine:
        combine_results(args.combine, args.out)
    elif args.seeds_summary:
        summarise_seeds(args.seeds_summary, args.out)
    elif args.markdown:
        print(variants_table(json.loads(Path(args.out).read_text())))
    elif args.eval_stage:
        default_out = Path(args.out).with_name(f"{Path(args.out).stem}_stage{args.eval_stage}.json")
        evaluate_stage(args.out, args.eval_stage, args.variants.split(","), args.eval_out or str(default_out),
                       args.eval_batch)
    else:
        run_experiment(args)
    return 0


def run_experiment(args: argparse.Namespace) -> dict:
    """Every asked-for variant trained and evaluated in turn, the results file rewritten after each (kept variants
    first with ``--merge``), then the paired comparisons."""
    common = list(args.overrides)
    if args.smoke:
        args.data = str(make_toy_data(Path(args.output_dir) / "toy-data"))
        args.encoder, args.steps, args.max_test = "random:tiny", "3,3,3,3", 9
        common += ["data.qtypes=null", "prompt.system=''"]
    steps = stage_budget(args.steps, "--steps")
    examples = stage_budget(args.examples, "--examples") if args.examples else None
    if examples:
        steps = None
    random_size = args.random_size
    if random_size is None:
        random_size = "tiny"
        if not args.encoder.startswith("random:") and (Path(args.encoder) / "config.json").is_file():
            random_size = json.loads((Path(args.encoder) / "config.json").read_text()).get("size", "tiny")
    test = load_records(args.data, "test", kind="closed")
    test = sample_per_qtype(test, args.max_test, args.seed)
    results = {"experiment": "alm_closed_qa_encoder_ablation", "data": args.data, "encoder": args.encoder,
               "random_encoder_size": random_size, "seed": args.seed, "steps_per_stage": steps,
               "examples_per_stage": examples,
               "overrides": common, "test_questions": len(test),
               "test_qtypes": {q: sum(r["qtype"] == q for r in test) for q in sorted({r["qtype"] for r in test})},
               "versions": provenance(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "variants": {}}
    out = Path(args.out)
    try:
        old = json.loads(out.read_text()) if out.is_file() else None
    except ValueError:
        old = None
    same = old is not None and all(old.get(k) == results[k] for k in SAME_EXPERIMENT)
    if args.merge and old is not None:
        if not same:
            raise SystemExit(f"--merge: {out} was made with other data/seed/steps/test set; not merging")
        results["variants"] = {k: v for k, v in old["variants"].items() if k not in args.variants.split(",")}
        results["encoder"] = old["encoder"] if args.encoder.startswith("random:") else args.encoder
    for v in args.variants.split(","):
        t0 = time.perf_counter()
        previous = old["variants"].get(v) if args.reuse and same else None
        results["variants"][v] = run_variant(v, args.encoder, args.data, steps, common, args.output_dir, args.seed,
                                             test, args.eval_batch, random_size, args.reuse, examples, previous)
        results["variants"][v]["total_seconds"] = round(time.perf_counter() - t0, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, results)
    results["comparisons"] = compare_variants(results)
    atomic_write_json(out, results)
    print(f"wrote {out}")
    print_variants_summary(results)
    return results


if __name__ == "__main__":
    sys.exit(main())
