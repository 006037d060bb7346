"""Seconds per ALM training step: cached encoder tokens vs encoding on the fly, fp32 vs bf16 autocast, 1 vs 2 threads.

    python bench/alm_step.py --steps 4 --batch-size 16 --out results/alm_step_bench.json

One step is what ``train-alm`` runs: the batch's audio inputs (tokens from the featurizer's cache, or decode +
fbank + frozen encoder for every clip), forward of SmolLM2-135M with the audio spliced in, answer-only loss,
backward, AdamW step. Trainable: the projector (stage 1) or, with ``--lora``, projector + LoRA (stages 2-4).
Batches are consecutive slices of the embedded data's keyword questions (real clips), so on-the-fly encoding decodes
new clips each step. The settings take turns step by step (so a busy machine's load falls on all alike); the first
round is a warm-up and not timed; s/step is the median of the timed steps. The encoder is ``random:tiny`` by
default (same cost as the pretrained tiny one). Prints one line per setting and writes a JSON (machine, load
average, versions, every setting's s/step).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("MOSAIC_ALM_DATA", "data/embedded-small"))
    ap.add_argument("--encoder", default="random:tiny")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per setting (after one warm-up step)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--lora", action="store_true", help="train projector + LoRA (stages 2-4) instead of the projector")
    ap.add_argument("--out", default="results/alm_step_bench.json")
    args = ap.parse_args(argv)

    from mosaic_alm.artifact import build_from
    from mosaic_alm.data import (
        Collator,
        InstructionDataset,
        PromptFormatter,
        load_records,
    )
    from mosaic_alm.featurizer import AudioFeaturizer
    from mosaic_alm.stage_config import STAGES
    from mosaic_core.config import load_config
    from mosaic_core.io import atomic_write_json
    from mosaic_core.provenance import provenance
    from mosaic_core.runtime import cpu_bf16_isa

    torch.manual_seed(0)
    stage = STAGES[1] if args.lora else STAGES[0]
    cfg = load_config(stage, [f"data.root={args.data}", f"audio.encoder={args.encoder}", "train.init_from=null"])
    model = build_from(cfg, init_from=None, device="cpu")
    model.train()
    model.apply_trainable(verbose=False)
    recs = load_records(args.data, "train", kind="closed", qtypes=["keyword_word"])
    n = args.batch_size * (args.steps + 1)
    ds = InstructionDataset(recs[:n], PromptFormatter.for_model(model))
    collate = Collator(model.tokenizer.pad_token_id, "right")
    batches = [collate([ds[i] for i in range(s, s + args.batch_size)]) for s in range(0, n, args.batch_size)]
    seq = [int(b["input_ids"].shape[1]) for b in batches]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    cache = tempfile.mkdtemp(prefix="alm-step-bench-")
    load0 = os.getloadavg()

    # settings run round-robin, one step each in turn, so a busy machine's load falls on all of them alike
    settings = [(int(t), bf16, cached) for t in args.threads.split(",") for bf16 in (False, True)
                for cached in (True, False)]
    feats, times, losses = {}, {s: [] for s in settings}, {}
    for threads, bf16, cached in settings:
        f = AudioFeaturizer(model.encoder, model.cfg.audio.target_frames, cache=cached,
                            precision="bf16" if bf16 else "fp32", cache_dir=cache)
        if cached:  # what train-alm does before its first step (not timed here)
            f.precompute([a for b in batches for a in b["audios"]], progress=False)
        feats[(threads, bf16, cached)] = f
    for i, b in enumerate(batches):
        for s in settings:
            threads, bf16, cached = s
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            audio = feats[s].inputs(b["audios"])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**{k: v for k, v in b.items() if k != "audios"}, **audio).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i > 0:  # the first round is a warm-up
                times[s].append(time.perf_counter() - t0)
            losses[s] = float(loss.detach())
        print(f"round {i}/{len(batches) - 1} done", flush=True)
    rows = []
    for s, ts in times.items():
        threads, bf16, cached = s
        rows.append({"threads": threads, "precision": "bf16" if bf16 else "fp32",
                     "audio": "cached" if cached else "on_the_fly", "s_per_step": round(statistics.median(ts), 3),
                     "mean_s": round(statistics.mean(ts), 3), "min_s": round(min(ts), 3), "max_s": round(max(ts), 3),
                     "loss": round(losses[s], 3)})
        print(rows[-1], flush=True)
    res = {"bench": "alm_training_step", "llm": cfg["llm"]["name_or_path"], "encoder": args.encoder,
           "trainable": "projector+lora" if args.lora else "projector", "batch_size": args.batch_size,
           "timed_steps": args.steps, "seq_len": seq, "target_frames": model.cfg.audio.target_frames,
           "cpu_bf16_isa": cpu_bf16_isa(), "cpus": os.cpu_count(),
           "load_average_at_start": load0, "load_average_at_end": os.getloadavg(),
           "results": rows, "versions": provenance()}
    base = {(r["threads"], r["precision"]): r["s_per_step"] for r in rows if r["audio"] == "cached"}
    res["on_the_fly_over_cached"] = {f"{t}t_{p}": round(r["s_per_step"] / base[(t, p)], 2)
                                     for r in rows if r["audio"] == "on_the_fly"
                                     for t, p in [(r["threads"], r["precision"])]}
    atomic_write_json(args.out, res)
    shutil.rmtree(cache, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
