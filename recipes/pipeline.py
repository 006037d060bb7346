"""Recipe: the whole pipeline at tiny scale on the embedded default, one command:

    mosaic-alm pipeline [--profile full|small] [--out runs/pipeline]

1. build the offline benchmark from Debian packages (cached) and its instruction data;
2. pretrain the tiny AudioMosaic encoder (contrastive) and, same data/steps/batch, the MAE baseline;
3. probe both, a random encoder and MFCC on the three tasks (results JSON + Markdown/HTML report);
4. train the audio-language model's four stages with (a) the pretrained encoder, (b) a random encoder, (c) no audio,
   report closed-ended QA accuracy per question type, then evaluate (a)'s artifact (QA, captions, classify by
   generation);
5. write ``report.html``, one self-contained page of all of it with a gallery of test clips (``mosaic-alm report``).
Every step resumes or reuses what an earlier run left (data cache, checkpoints).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mosaic_core.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mosaic-alm pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=["small", "full"], default="full", help="embedded data profile")
    p.add_argument("--data-root", default=None, help="default data/embedded-<profile>")
    p.add_argument("--out", default="runs/pipeline")
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--probe-seeds", default="0,1,2")
    p.add_argument("--probe-epochs", type=int, default=None, help="probe training epochs (default: the eval recipe's)")
    p.add_argument("--max-clips", type=int, default=0, help="> 0: at most this many clips per split in the encoder "
                                                              "evaluation (a quick look)")
    p.add_argument("--alm-steps", default="250,100,200,60", help="optimizer steps of ALM stages 1-4")
    p.add_argument("--alm-test", type=int, default=360, help="closed-ended test questions")
    p.add_argument("--skip-alm", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    from encoder.data.embedded import build
    from encoder.pretraining import PretrainConfig
    from mosaic_alm.instructions import generate
    from mosaic_core.config import load_config, load_recipe, parse_config

    from .pretrain import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.data_root or REPO / "data" / f"embedded-{args.profile}")
    timings = {}

    t = time.time()
    print(f"== 1/4 data: {root} ({args.profile})", flush=True)
    build(root, profile=args.profile, seed=args.seed)
    generate(root, seed=args.seed)
    timings["data_s"] = round(time.time() - t, 1)

    encoders = {}
    for name, objective in (("audiomosaic", "contrastive"), ("mae", "mae")):
        t = time.time()
        run = out / f"pretrain-{name}"
        print(f"== 2/4 pretrain {name} ({objective}) -> {run}", flush=True)
        raw = load_config(REPO / "configs/pretrain/tiny.yaml", [
            f"data.root={root}", f"run_dir={run}", f"train.max_steps={args.pretrain_steps}", f"seed={args.seed}",
            f"objective={objective}", "train.progress=false"])
        if not (run / "encoder" / "config.json").is_file() or not _finished(run, args.pretrain_steps):
            train(parse_config(PretrainConfig, raw, "pretraining config"), raw)
        encoders[name] = str(run / "encoder")
        timings[f"pretrain_{name}_s"] = round(time.time() - t, 1)

    t = time.time()
    print("== 3/4 encoder evaluation", flush=True)
    from .eval_encoder import EncoderEvalConfig, evaluate

    seeds = "[" + args.probe_seeds + "]"
    cfg, _ = load_recipe(EncoderEvalConfig, REPO / "configs/eval/encoder_embedded.yaml", [
        f"data_root={root}", f"run_dir={out / 'eval-encoder'}", f"seed={args.seed}", f"probe_seeds={seeds}",
        f"max_clips_per_split={args.max_clips}",
        *([f"probe.epochs={args.probe_epochs}"] if args.probe_epochs else []),
        f"encoders={{audiomosaic: {encoders['audiomosaic']}, mae: {encoders['mae']}, random: random}}",
        "tasks=[" + ", ".join(str(REPO / f"configs/data/embedded_{t}.yaml") for t in
                              ("keywords", "instruments", "environment")) + "]"])
    record_probe_results(evaluate(cfg), encoders, f"mosaic-alm pipeline {out}, seeds {args.probe_seeds}")
    timings["eval_encoder_s"] = round(time.time() - t, 1)

    if not args.skip_alm:
        t = time.time()
        print("== 4/4 audio-language model: pretrained vs random encoder vs no audio", flush=True)
        from .alm_experiment import main as alm_experiment

        alm_experiment(["--data", str(root), "--encoder", encoders["audiomosaic"], "--steps", args.alm_steps,
                        "--max-test", str(args.alm_test), "--seed", str(args.seed),
                        "--output-dir", str(out / "alm"), "--out", str(out / "alm_qa.json"), "--reuse"])
        timings["alm_s"] = round(time.time() - t, 1)
        t = time.time()
        from eval.alm_eval import evaluate_alm

        stages = sorted((out / "alm" / "pretrained").glob("stage*/artifact"))
        if stages:
            record_qa_results(out / "alm_qa.json", stages[-1], f"mosaic-alm pipeline {out}")
        if stages:
            print(f"== ALM evaluation of {stages[-1]} (QA, captions, classify-by-generation)", flush=True)
            evaluate_alm(str(stages[-1]), str(root), str(out / "eval-alm"), seed=args.seed)
        timings["eval_alm_s"] = round(time.time() - t, 1)
    atomic_write_json(out / "pipeline.json", {"args": vars(args), "data_root": str(root), "timings": timings},
                      indent=1)
    from .report import build_report

    print(f"== report: {build_report(out, root, seed=args.seed)}", flush=True)
    print(f"== done: {out} (timings {timings})", flush=True)
    return 0


def record_probe_results(results: dict, encoders: dict, source: str) -> None:
    """Put the probes' test accuracies into the model cards of the evaluated encoder folders."""
    from mosaic_core.cards import add_card_results

    for name, folder in encoders.items():
        rows = [{"task": "audio-classification", "task_name": f"{probe} probe (frozen encoder)", "dataset": task,
                 "split": role, "metric": "accuracy", "value": r["accuracy"]["mean"], "source": source}
                for task, by_enc in results["tasks"].items() for probe, by_role in by_enc.get(name, {}).items()
                if isinstance(by_role, dict) for role, r in by_role.items() if role.startswith("test")]
        if rows and (Path(folder) / "README.md").is_file():
            add_card_results(folder, rows)


def record_qa_results(qa_json: Path, artifact: Path, source: str) -> None:
    """Put the pretrained variant's closed-ended QA accuracy (overall and per question type) into its card."""
    from mosaic_core.cards import add_card_results

    acc = json.loads(qa_json.read_text())["variants"].get("pretrained", {}).get("accuracy")
    if not acc or not (artifact / "README.md").is_file():
        return
    rows = [{"task": "audio-text-to-text", "task_name": "closed-ended QA, exact match", "dataset": f"embedded/{q}",
             "split": "test", "metric": "accuracy", "value": a["exact_match"], "source": source}
            for q, a in {"all": acc["overall"], **acc["per_qtype"]}.items()]
    add_card_results(artifact, rows)


def _finished(run: Path, steps: int) -> bool:
    hist = run / "history.json"
    return hist.is_file() and len(json.loads(hist.read_text())) >= steps


if __name__ == "__main__":
    sys.exit(main())
