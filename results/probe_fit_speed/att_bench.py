"""Extract the keywords task's features of an encoder once (for att_fit.py).

    python results/probe_fit_speed/att_bench.py [ENCODER] [DATA] [OUT]

Reads the task through ``configs/data/embedded_keywords.yaml`` and saves features, labels and the class count to OUT
(default ``runs/probe_fit_speed/kw_feats.pt``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    enc_path = argv[0] if len(argv) > 0 else "runs/pipeline/pretrain-audiomosaic/encoder"
    data = argv[1] if len(argv) > 1 else "data/embedded-full"
    out = argv[2] if len(argv) > 2 else "runs/probe_fit_speed/kw_feats.pt"
    import torch

    torch.set_num_threads(1)
    from encoder.data.tasks import TaskConfig, load_task
    from encoder.hf import resolve_encoder
    from eval.embeddings import extract_features, load_waves, spectrogram_inputs

    enc = resolve_encoder(enc_path).eval()
    task = load_task(TaskConfig(config="configs/data/embedded_keywords.yaml", data_root=data, cache="never"), seed=0)
    splits = {r: [task.rows[i] for i in idx.tolist()] for r, idx in task.splits.items()}
    feats, labels = {}, {}
    t = time.time()
    for role, rows in splits.items():
        w, _ = load_waves(rows)
        fb = enc.config.fbank_config(task.fbank.target_frames)
        feats[role] = extract_features(enc, spectrogram_inputs(w, fb), fb, 64, bf16=True)
        labels[role] = torch.tensor([task.classes.index(r["label"]) for r in rows])
    print("extract", time.time() - t, {k: tuple(v["tokens"].shape) for k, v in feats.items()}, flush=True)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    torch.save({"feats": feats, "labels": labels, "n": len(task.classes)}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
