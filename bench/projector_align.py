"""The attentive projector's training step as the projector alignment runs it (issue 23: where the minutes go).

    python bench/projector_align.py --out results/projector_align.json

The default recipe aligns its attentive projector for 1,000 steps of 128 clips before the LLM steps
(``mosaic_alm.align``): each step runs the projector forward and backward on ``[128, 128, 192]`` tokens of the tiny
encoder (8 slots, SmolLM2's width 576) and an AdamW step. Two implementations of the same function take turns step
by step on the same batches, one torch thread, so a busy machine's load falls on both alike:

* ``module``: ``nn.MultiheadAttention(norm_q(query), norm_kv(x), norm_kv(x))`` as the projector computed it before
  (keys and values of every token; torch's fused attention kernel);
* ``query_side``: the projector now (:mod:`encoder.query_attention`: the projections folded into the 8 queries).

Prints and writes the median ms a step (forward + backward + optimizer) per implementation and precision, and the
largest difference of their outputs on one batch.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from eval.results import write_results
    from mosaic_alm.projector import AudioProjector, AudioProjectorConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    proj = AudioProjector(192, 576, 8, AudioProjectorConfig(kind="attentive"), target_rms=0.05, n_audio=8)
    opt = torch.optim.AdamW(proj.parameters(), lr=0.0)  # lr 0: both implementations see the same weights

    def module(tokens):
        x = (proj.features(tokens) - proj.feat_mean) / proj.feat_std
        kv = proj.norm_kv(x)
        q = proj.query.expand(x.shape[0], -1, -1)
        q = q + proj.attn(proj.norm_q(q), kv, kv, need_weights=False)[0]
        return proj.linear(proj.norm(q + proj.mlp(proj.norm_mlp(q))))

    impls = {"module": module, "query_side": proj}
    pool = torch.randn(1024, args.tokens, 192)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = pool[: args.batch]
        diff = float((impls["module"](x) - impls["query_side"](x)).abs().max())
    times: dict[str, list[float]] = {f"{k} {p}": [] for p in ("fp32", "bf16") for k in impls}
    for step in range(args.steps + 1):
        idx = torch.randint(len(pool), (args.batch,), generator=g)
        for key in times:
            name, prec = key.split()
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                slots = impls[name](pool[idx]).float()
            loss = slots.mean(1).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step:  # the first round is warm-up
                times[key].append(time.perf_counter() - t0)
    ms = {k: round(1000 * statistics.median(v), 1) for k, v in times.items()}
    for k, v in ms.items():
        print(f"{k:>20}: {v:7.1f} ms a step")
    for p in ("fp32", "bf16"):
        print(f"speed-up {p}: {ms[f'module {p}'] / ms[f'query_side {p}']:.2f}x")
    print(f"largest output difference (fp32): {diff:.2e}")
    if args.out:
        write_results(Path(args.out).parent, Path(args.out).stem,
                      {"ms_per_step": ms, "max_abs_diff_fp32": diff,
                       "speedup": {p: round(ms[f"module {p}"] / ms[f"query_side {p}"], 2) for p in ("fp32", "bf16")}},
                      {"steps": args.steps, "batch": args.batch, "tokens": args.tokens, "threads": 1}, seed=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
