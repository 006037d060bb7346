"""fp32 vs bf16 autocast on this CPU, side by side: encoder pretraining steps and probe feature extraction.

    python bench/precision_cpu.py [--jobs tiny,tiny_extract,vit_base] [--threads 1,2] [--steps 4] \
        [--out results/precision_cpu.json]

Every (job, threads) pair alternates fp32 and bf16 step by step (after one warm-up step each), so both see the same
machine load; the figure is the median seconds per step. Jobs: ``tiny`` = the tiny recipe's contrastive step
(batch 64, 128 frames, AdamW), ``tiny_extract`` = frozen-feature extraction of 64 clips (what the probes read),
``vit_base`` = the ViT-B/16 structured step at batch 8, 1024 frames. The ALM step is in ``bench/alm_step.py``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

JOBS = {"tiny": ("tiny", 64, 128), "tiny_extract": ("tiny", 64, 128), "vit_base": ("base", 8, 1024)}


def make_step(job: str):
    import torch

    from encoder.pretraining import (
        PretrainConfig,
        build_pretrain_model,
        contrastive_step,
    )
    from mosaic_core.config import load_config, parse_config

    size, batch, frames = JOBS[job]
    raw = load_config("configs/pretrain/vit_base.yaml", [
        f"model.size={size}", f"model.target_frames={frames}", f"data.target_frames={frames}"])
    cfg = parse_config(PretrainConfig, raw)
    torch.manual_seed(0)
    model = build_pretrain_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    views = torch.randn(batch, 2, frames, 128)
    state = {"step": 0}

    def step(bf16: bool) -> float:
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
        t = time.perf_counter()
        if job == "tiny_extract":
            with torch.no_grad(), amp:
                model.encoder.forward_features(views[:, 0], output_hidden_states=True)
        else:
            opt.zero_grad(set_to_none=True)
            contrastive_step(model, views, cfg, state["step"], 0, lambda loss: loss.backward(), amp)
            opt.step()
        state["step"] += 1
        return time.perf_counter() - t

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", default="tiny,tiny_extract,vit_base")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", default="results/precision_cpu.json")
    args = p.parse_args(argv)
    import torch

    from mosaic_core.runtime import cpu_bf16_isa

    rows = []
    for job in args.jobs.split(","):
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            step = make_step(job)
            step(False), step(True)  # warm-up
            times = {"fp32": [], "bf16": []}
            for _ in range(args.steps):
                times["fp32"].append(step(False))
                times["bf16"].append(step(True))
            row = {"job": job, "threads": threads, "batch": JOBS[job][1], "frames": JOBS[job][2],
                   **{f"{k}_s": round(statistics.median(v), 4) for k, v in times.items()}}
            row["speedup"] = round(row["fp32_s"] / row["bf16_s"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"cpu_bf16_isa": cpu_bf16_isa(), "torch": torch.__version__, "steps": args.steps, "rows": rows,
           "command": "python bench/precision_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
