"""Epoch time of the pretraining data path (PretrainDataset + DataLoader) with 5 % corrupt files vs none.

    python bench/bad_files.py [--root data/embedded-small] [--clips 400] [--bad 0.05] [--workers 0] [--repeats 3]
                              [--augment]

Copies ``--clips`` real keyword clips into a temporary folder twice: once clean, once with ``--bad`` of them
replaced by corrupt files (empty, text named .wav, random bytes, truncated FLAC, header-only WAV, NaN floats).
Each bad clip costs one failed decode and a deterministic replacement. Prints the best-of-``--repeats`` epoch time
of each and the slowdown (target: < 10 %). A figure to read, not a pass/fail test.
"""
from __future__ import annotations

import argparse
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoder.data.dataset import EpochBatchSampler, PretrainDataset, WaveAugmentConfig, collate_views  # noqa: E402
from encoder.data.manifest import read_manifest  # noqa: E402
from encoder.features import FbankConfig  # noqa: E402


def corrupt(path: Path, kind: int, good: Path) -> None:
    kind %= 6
    if kind == 0:
        path.write_bytes(b"")
    elif kind == 1:
        path.write_text("not audio\n" * 20)
    elif kind == 2:
        path.write_bytes(os.urandom(8192))
    elif kind == 3:
        data, sr = sf.read(good, dtype="float32")
        tmp = path.with_suffix(".flac.tmp")
        sf.write(tmp, data, sr, format="FLAC")
        path.write_bytes(tmp.read_bytes()[: max(64, tmp.stat().st_size // 3)])
        tmp.unlink()
    elif kind == 4:
        path.write_bytes(b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000,
                                                                                    32000, 2, 16)
                         + b"data" + struct.pack("<I", 0))
    else:
        sf.write(path, np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")


def build(rows, folder: Path, bad_fraction: float, seed: int = 0) -> list[dict]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    bad = set(rng.choice(len(rows), int(round(bad_fraction * len(rows))), replace=False).tolist())
    out = []
    for i, r in enumerate(rows):
        dst = folder / f"{i:05d}.wav"
        if i in bad:
            corrupt(dst, i, Path(r["path"]))
        else:
            shutil.copy(r["path"], dst)
        out.append({"id": f"c{i}", "path": str(dst)})
    return out


def epoch_time(rows, args) -> tuple[float, int]:
    fb = FbankConfig(target_frames=args.frames, max_seconds=30)
    ds = PretrainDataset(rows, fb, WaveAugmentConfig(enabled=args.augment), seed=0)
    steps = len(rows) // args.batch
    sampler = EpochBatchSampler(len(rows), args.batch, 0, 1, 0, 0, steps)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_views,
                                         num_workers=args.workers)
    t0, bad = time.perf_counter(), 0
    for batch in loader:
        assert torch.isfinite(batch["views"]).all()
        bad += len(batch["bad"])
    return time.perf_counter() - t0, bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="data/embedded-small")
    p.add_argument("--clips", type=int, default=400)
    p.add_argument("--bad", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--augment", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = read_manifest(Path(args.root) / "keywords/manifest.jsonl")[: args.clips]
    with tempfile.TemporaryDirectory() as tmp:
        clean = build(rows, Path(tmp) / "clean", 0.0)
        dirty = build(rows, Path(tmp) / "dirty", args.bad)
        epoch_time(clean[: args.batch * 2], args)  # warm-up (imports, caches)
        times = {"clean": [], "dirty": []}
        bad_seen = 0
        for _ in range(args.repeats):  # interleaved, best of N: robust to a busy machine
            times["clean"].append(epoch_time(clean, args)[0])
            t, bad_seen = epoch_time(dirty, args)
            times["dirty"].append(t)
    c, d = min(times["clean"]), min(times["dirty"])
    print(f"[bad-files] {len(rows)} clips, batch {args.batch}, workers {args.workers}, augment {args.augment}, "
          f"torch threads 1")
    print(f"[bad-files] epoch, no bad files:      {c:7.3f} s  (runs: {', '.join(f'{x:.3f}' for x in times['clean'])})")
    print(f"[bad-files] epoch, {args.bad:.0%} bad files:     {d:7.3f} s  (runs: "
          f"{', '.join(f'{x:.3f}' for x in times['dirty'])}); bad clips reported: {bad_seen}")
    print(f"[bad-files] slowdown: {100 * (d / c - 1):+.1f} %  (target < 10 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
