"""Seconds per training step and peak memory: structured masking vs both views unmasked.

    python bench/masking_step.py [--size base] [--batch 8] [--frames 1024] [--steps 2] [--threads N] \
        [--precision fp32|bf16]

Each mode runs in its own subprocess so peak RSS (CPU) / peak allocated memory (GPU) is that mode's alone. A step
is the real pretraining step (two views through the ViT, projector, NT-Xent, backward, AdamW). The paper's claim is
that structured views cost much less: the target is structured <= 0.45 x unmasked seconds per step.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not


def run_mode(args) -> dict:
    import contextlib

    import torch

    from encoder.pretraining import PretrainConfig, build_pretrain_model, contrastive_step
    from mosaic_core.config import load_config, parse_config

    if args.threads:
        torch.set_num_threads(args.threads)
    over = [f"model.size={args.size}", f"model.target_frames={args.frames}", f"data.target_frames={args.frames}",
            "model.drop_path=0.1", f"train.precision={args.precision}"]
    if args.mode == "unmasked":
        over += ["masking.time_view=none", "masking.freq_view=none"]
    raw = load_config("configs/pretrain/vit_base.yaml", over)
    cfg = parse_config(PretrainConfig, raw)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_pretrain_model(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    views = torch.randn(args.batch, 2, args.frames, 128, device=device)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
           else contextlib.nullcontext())
    times = []
    for step in range(args.steps + 1):  # first step is warm-up
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = contrastive_step(model, views, cfg, step, 0, lambda loss: loss.backward(), amp)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    # FLOPs of the same step (machine-independent; counted on one clip and scaled, FLOPs are linear in batch)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        contrastive_step(model, views[:1], cfg, 0, 0, lambda loss: loss.backward(), amp)
    gflops = counter.get_total_flops() * args.batch / 1e9
    n_time, n_freq = cfg.model.grid(args.frames)
    tokens = {"unmasked": 2 * n_time * n_freq}.get(args.mode, None)  # both views, CLS not counted
    if tokens is None:
        from encoder.masking import kept_count

        tokens = (kept_count(n_time, cfg.masking.time_ratio) * n_freq
                  + n_time * kept_count(n_freq, cfg.masking.freq_ratio))
    return {"mode": args.mode, "s_per_step": sum(times[1:]) / args.steps, "warmup_s": times[0], "peak_mb": peak,
            "tokens_per_clip_both_views": tokens, "loss": float(out["loss"]), "device": str(device),
            "gflop_per_step": gflops,
            "threads": torch.get_num_threads(), "precision": args.precision,
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="base")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast (as pretraining "
                                                                                  "does on GPUs)")
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats per mode (fastest kept)")
    p.add_argument("--mode", choices=["structured", "unmasked"], help=argparse.SUPPRESS)
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = p.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    # Modes alternate (S U S U ...) and each keeps its fastest repeat, so load from other processes on shared
    # cores hits both modes alike instead of whichever happened to run during a busy spell.
    runs = {"structured": [], "unmasked": []}
    for _ in range(args.repeats):
        for mode in ("structured", "unmasked"):
            cmd = [sys.executable, __file__, "--mode", mode, "--size", args.size, "--batch", str(args.batch),
                   "--frames", str(args.frames), "--steps", str(args.steps), "--threads", str(args.threads),
                   "--precision", args.precision]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = {m: min(r, key=lambda x: x["s_per_step"]) for m, r in runs.items()}
    for m in results:
        results[m]["all_s_per_step"] = [r["s_per_step"] for r in runs[m]]
    s, u = results["structured"], results["unmasked"]
    print(f"ViT-{args.size} batch {args.batch} x {args.frames} frames, {args.precision}, on "
          f"{s['gpu'] or s['device']} ({s['threads']} threads)")
    print(f"{'mode':<12}{'tokens/clip':>12}{'GFLOP/step':>12}{'s/step':>10}{'peak MB':>10}  all repeats (s/step)")
    for r in (s, u):
        print(f"{r['mode']:<12}{r['tokens_per_clip_both_views']:>12}{r['gflop_per_step']:>12.0f}{r['s_per_step']:>10.2f}"
              f"{r['peak_mb']:>10.0f}  " + " ".join(f"{v:.2f}" for v in r["all_s_per_step"]))
    print(f"structured / unmasked: FLOPs {s['gflop_per_step'] / u['gflop_per_step']:.3f} x")
    ratio = s["s_per_step"] / u["s_per_step"]
    print(f"structured / unmasked: time {ratio:.3f} x (target <= 0.45), peak memory "
          f"{s['peak_mb'] / u['peak_mb']:.3f} x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "time_ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
