"""Data-loader throughput (clips/s): WebDataset shards vs per-clip files from the manifest, 0/1/2 workers.

    python bench/loader_throughput.py [--root data/embedded-small] [--tasks keywords,instruments,environment]
                                      [--workers 0,1,2] [--batch 16] [--shard-size 64] [--repeats 2]
                                      [--step-clips-per-s auto] [--out results/loader_throughput.json]

Writes the manifests' clips to shards in a temporary folder (timed), then reads one epoch per setting through a
real ``DataLoader``, with two kinds of work per clip:

* ``decode``: audio only (manifest: ``encoder.features.load_audio``; shards: FLAC decode in ``ShardDataset``);
* ``fbank``: decode + the model input (manifest: ``encoder.features.file_to_input``; shards: ``FbankTransform``),
  the same [1024, 128] normalised spectrogram the encoder trains on.

Reports the best of ``--repeats`` epochs (worker start-up included) and compares it with what a training step
consumes: ``--step-clips-per-s auto`` (the default) times a few steps of the tiny pretraining recipe
(configs/pretrain/tiny.yaml: tiny ViT, batch 64, 128 frames, forward + backward + AdamW) in fp32 and, where the
CPU computes bf16 natively, bf16 autocast, on 1 thread; or give fp32[,bf16] figures.
A figure to read, not a pass/fail test. Set OMP_NUM_THREADS=1 to match the training measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from encoder.data.manifest import read_manifest  # noqa: E402
from encoder.data.shards import FbankTransform, ShardDataset, collate_clips, write_shards  # noqa: E402
from encoder.features import FbankConfig, file_to_input, load_audio  # noqa: E402


class ManifestClips(Dataset):
    """The per-clip file path: one decode (and optionally one fbank) per manifest row."""

    def __init__(self, rows, mode: str, cfg: FbankConfig):
        self.rows, self.mode, self.cfg = rows, mode, cfg

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        if self.mode == "fbank":
            return {"id": row["id"], "input": file_to_input(row["path"], self.cfg)}
        return {"id": row["id"], "audio": load_audio(row["path"], self.cfg.sample_rate, self.cfg.max_seconds)}


def collate_any(items):
    return {k: torch.stack([it[k] for it in items]) if k == "input" else [it[k] for it in items] for k in items[0]}


def epoch_rate(make_loader, repeats: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = sum(len(b["id"]) for b in make_loader())
        best = min(best, time.perf_counter() - t0)
    return n / best, n


def step_rates(steps: int = 3) -> dict[str, float]:
    """Clips/s one process trains at with the tiny pretraining recipe (random input of its shape: the step's cost
    does not depend on the values), fp32 and bf16 autocast where native."""
    from encoder.pretraining import PretrainConfig, build_pretrain_model, contrastive_step
    from mosaic_core.config import load_recipe
    from mosaic_core.runtime import autocast, use_bf16

    cfg, _ = load_recipe(PretrainConfig, Path(__file__).resolve().parents[1] / "configs/pretrain/tiny.yaml", [])
    b = cfg.train.batch_size
    views = torch.randn(b, 2, cfg.data.target_frames, cfg.model.num_mel_bins)
    cpu = torch.device("cpu")
    out = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        if bf16 and not use_bf16("auto", cpu):
            continue
        torch.manual_seed(0)
        model = build_pretrain_model(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        best = float("inf")
        for i in range(steps + 1):  # the first step warms up
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            contrastive_step(model, views, cfg, i, 0, lambda loss: loss.backward(), autocast(bf16, cpu))
            opt.step()
            if i:
                best = min(best, time.perf_counter() - t0)
        out[name] = round(b / best, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.environ.get("MOSAIC_ALM_DATA", "data/embedded-small"))
    ap.add_argument("--tasks", default="keywords,instruments,environment")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--step-clips-per-s", default="auto",
                    help="clips/s a training step consumes: fp32[,bf16], or auto: time the tiny recipe's step")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    cfg = FbankConfig()
    rows = []
    for task in args.tasks.split(","):
        rows += read_manifest(Path(args.root) / task / "manifest.jsonl")
    if args.step_clips_per_s == "auto":
        need = step_rates()
        print("tiny pretraining step (batch 64, 128 frames, 1 thread): " +
              ", ".join(f"{k} {v:g} clips/s" for k, v in need.items()))
    else:
        need = dict(zip(("fp32", "bf16"), (float(x) for x in args.step_clips_per_s.split(","))))
    source_bytes = sum(os.path.getsize(r["path"]) for r in rows)
    results = []
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        t0 = time.perf_counter()
        index = write_shards(rows, Path(tmp) / "shards", shard_size=args.shard_size)
        write_s = time.perf_counter() - t0
        shard_bytes = sum(s["bytes"] for s in index["shards"])
        print(f"{len(rows)} clips from {args.tasks} ({source_bytes / 1e6:.1f} MB WAV) -> {len(index['shards'])} "
              f"shards ({shard_bytes / 1e6:.1f} MB FLAC) in {write_s:.1f} s ({len(rows) / write_s:.0f} clips/s)")
        print(f"{'source':9} {'work':6} {'workers':>7} {'clips/s':>8}  " +
              "  ".join(f"x{k} step ({v:g}/s)" for k, v in need.items()))
        for mode in ("decode", "fbank"):
            for w in (int(x) for x in args.workers.split(",")):
                for source in ("manifest", "shards"):
                    if source == "manifest":
                        ds = ManifestClips(rows, mode, cfg)
                        make = lambda: DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=w,  # noqa
                                                  collate_fn=collate_any)
                    else:
                        ds = ShardDataset(Path(tmp) / "shards", transform=FbankTransform(cfg) if mode == "fbank"
                                          else None)
                        make = lambda: DataLoader(ds, batch_size=args.batch, num_workers=w,  # noqa
                                                  collate_fn=collate_clips)
                    rate, n = epoch_rate(make, args.repeats)
                    assert n == len(rows), (source, mode, w, n)
                    ratio = {k: rate / v for k, v in need.items()}
                    results.append({"source": source, "work": mode, "workers": w, "clips_per_s": round(rate, 1),
                                    "vs_step": {k: round(v, 2) for k, v in ratio.items()}})
                    print(f"{source:9} {mode:6} {w:>7} {rate:>8.0f}  " +
                          "  ".join(f"{r:>17.2f}" for r in ratio.values()), flush=True)
    report = {"clips": len(rows), "tasks": args.tasks, "root": str(args.root), "batch": args.batch,
              "shard_size": args.shard_size, "shards": len(index["shards"]), "source_mb": round(source_bytes / 1e6, 2),
              "shard_mb": round(shard_bytes / 1e6, 2), "write_clips_per_s": round(len(rows) / write_s, 1),
              "step_clips_per_s": need, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "load_avg_1min_before": round(load_before, 2),
              "fbank": {"target_frames": cfg.target_frames, "mel_bins": cfg.num_mel_bins}, "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
