"""Does torch.compile (inductor's CPU backend) speed up the ALM's training step where bf16 is not native? (issue 23)

    python bench/alm_compile.py --steps 6 --precision fp32 --out results/alm_compile/fp32.json

The step ``train-alm`` runs in the default recipe's stage 3 (projector + LoRA trainable, frozen encoder tokens from
the cache, batch 8, one torch thread as each pipeline variant runs): forward of SmolLM2-135M with the audio spliced
in, answer-only loss, backward, AdamW step. Two settings share one model and one optimizer and take turns step by
step on the same batches, so a busy machine's load falls on both alike: eager, and ``torch.compile(model)``
(default mode; ``--dynamic`` for dynamic shapes, else every new sequence length compiles again). The learning rate
is 0, so both settings see the same weights at every step and their losses on a batch must agree to rounding. A
compiled step during which dynamo compiled a new graph (its ``unique_graphs`` counter rose) is a (re)compilation and
timed apart; s/step is the median of the other steps (both settings' first round left out as warm-up).
"""
from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per setting (after one warm-up round)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dynamic", action="store_true", help="torch.compile(dynamic=True)")
    ap.add_argument("--out", default="results/alm_compile/fp32.json")
    args = ap.parse_args(argv)

    from eval.results import write_results
    from mosaic_alm.artifact import build_from
    from mosaic_alm.data import Collator, InstructionDataset, PromptFormatter, load_records
    from mosaic_alm.featurizer import AudioFeaturizer
    from mosaic_alm.stage_config import STAGES
    from mosaic_core.config import load_config
    from mosaic_core.runtime import cpu_bf16_isa

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = load_config(STAGES[2], [f"data.root={args.data}", f"audio.encoder={args.encoder}", "train.init_from=null",
                                 "projector.kind=attentive"])  # the default recipe's projector
    model = build_from(cfg, init_from=None, device="cpu")
    model.train()
    model.apply_trainable(verbose=False)
    recs = load_records(args.data, "train", kind="closed")
    n = args.batch_size * (args.steps + 1)
    ds = InstructionDataset(recs[:: max(1, len(recs) // n)][:n], PromptFormatter.for_model(model))
    collate = Collator(model.tokenizer.pad_token_id, "right")
    batches = [collate([ds[i] for i in range(s, s + args.batch_size)]) for s in range(0, n, args.batch_size)]
    feats = AudioFeaturizer(model.encoder, model.cfg.audio.target_frames, cache=True, precision=args.precision,
                            cache_dir=tempfile.mkdtemp(prefix="alm-compile-bench-"))
    feats.precompute([a for b in batches for a in b["audios"]], progress=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.0)  # the full step's cost, the same weights for both settings
    compiled = torch.compile(model, dynamic=args.dynamic)
    runners = {"eager": model, "compiled": compiled}
    times = {k: [] for k in runners}
    losses = {k: [] for k in runners}
    bf16 = args.precision == "bf16"
    from torch._dynamo.utils import counters

    compiling = []
    for i, b in enumerate(batches):
        for name, run in runners.items():
            graphs = counters["stats"]["unique_graphs"]
            t0 = time.perf_counter()
            audio = feats.inputs(b["audios"])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = run(**{k: v for k, v in b.items() if k != "audios"}, **audio).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
            losses[name].append(round(float(loss.detach()), 4))
            if name == "compiled" and counters["stats"]["unique_graphs"] > graphs:
                compiling.append(i)
        print(f"round {i}/{len(batches) - 1} (length {b['input_ids'].shape[1]}): "
              + ", ".join(f"{k} {times[k][-1]:.2f} s, loss {losses[k][-1]}" for k in runners), flush=True)
    seq = [int(b["input_ids"].shape[1]) for b in batches]
    steady = {k: [t for i, t in enumerate(v) if i > 0 and i not in compiling] for k, v in times.items()}
    rows = {k: {"s_per_step": round(statistics.median(steady[k]), 3) if steady[k] else None,
                "steps": [round(t, 3) for t in v], "losses": losses[k]} for k, v in times.items()}
    rows["compiled"]["compilations"] = len(compiling)
    rows["compiled"]["compile_step_s"] = [round(times["compiled"][i], 1) for i in compiling]
    for k, r in rows.items():
        print(k, r, flush=True)
    both = rows["eager"]["s_per_step"] and rows["compiled"]["s_per_step"]
    speedup = rows["eager"]["s_per_step"] / rows["compiled"]["s_per_step"] if both else None
    print(f"steady-state speed-up of compiled over eager: {speedup if speedup is None else round(speedup, 2)}; "
          f"{len(compiling)} compilations of {len(batches)} steps ({rows['compiled']['compile_step_s']} s)", flush=True)
    numbers = {"settings": rows, "speedup": speedup, "seq_len": seq, "cpu_bf16_isa": cpu_bf16_isa(),
               "max_loss_difference": max(abs(a - b) for a, b in zip(losses["eager"], losses["compiled"])),
               "load_average_at_end": os.getloadavg()}
    out = Path(args.out)
    write_results(out.parent, out.stem, numbers, config=vars(args), seed=0)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
