import time, sys, torch
torch.set_num_threads(1)
from encoder.data.tasks import TaskConfig, load_task
from encoder.hf import resolve_encoder
from eval.embeddings import load_waves, spectrogram_inputs, extract_features, make_probe
from eval import probes as P
enc = resolve_encoder("/work/pipe-clone/runs/pipeline/pretrain-audiomosaic/encoder").eval()
task = load_task(TaskConfig(config="configs/data/embedded_keywords.yaml", data_root="data/embedded-full", cache="never"), seed=0)
splits = {r: [task.rows[i] for i in idx.tolist()] for r, idx in task.splits.items()}
feats, labels = {}, {}
t=time.time()
for role, rows in splits.items():
    w,_ = load_waves(rows); fb = enc.config.fbank_config(task.fbank.target_frames)
    feats[role] = extract_features(enc, spectrogram_inputs(w, fb), fb, 64, bf16=True)
    labels[role] = torch.tensor([task.classes.index(r["label"]) for r in rows])
print("extract", time.time()-t, {k: tuple(v["tokens"].shape) for k,v in feats.items()}, flush=True)
torch.save({"feats": feats, "labels": labels, "n": len(task.classes)}, "/work/logs/exp/kw_feats.pt")
