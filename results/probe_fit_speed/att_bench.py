"""Extract the keywords task's features of an encoder once (for att_fit.py).
Usage: python results/probe_fit_speed/att_bench.py [ENCODER] [DATA] [OUT]"""
import os, time, sys, torch
ENC = sys.argv[1] if len(sys.argv) > 1 else "runs/pipeline/pretrain-audiomosaic/encoder"
DATA = sys.argv[2] if len(sys.argv) > 2 else "data/embedded-full"
OUT = sys.argv[3] if len(sys.argv) > 3 else "runs/probe_fit_speed/kw_feats.pt"
torch.set_num_threads(1)
from encoder.data.tasks import TaskConfig, load_task
from encoder.hf import resolve_encoder
from eval.embeddings import load_waves, spectrogram_inputs, extract_features, make_probe
from eval import probes as P
enc = resolve_encoder(ENC).eval()
task = load_task(TaskConfig(config="configs/data/embedded_keywords.yaml", data_root=DATA, cache="never"), seed=0)
splits = {r: [task.rows[i] for i in idx.tolist()] for r, idx in task.splits.items()}
feats, labels = {}, {}
t=time.time()
for role, rows in splits.items():
    w,_ = load_waves(rows); fb = enc.config.fbank_config(task.fbank.target_frames)
    feats[role] = extract_features(enc, spectrogram_inputs(w, fb), fb, 64, bf16=True)
    labels[role] = torch.tensor([task.classes.index(r["label"]) for r in rows])
print("extract", time.time()-t, {k: tuple(v["tokens"].shape) for k,v in feats.items()}, flush=True)
os.makedirs(os.path.dirname(OUT) or ".", exist_ok=True)
torch.save({"feats": feats, "labels": labels, "n": len(task.classes)}, OUT)
