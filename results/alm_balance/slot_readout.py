import os, sys, json, collections, torch
import torch.nn.functional as F
torch.set_num_threads(1)
from mosaic_alm.artifact import load_alm
from mosaic_alm.data import load_records
from mosaic_alm.align import word_embeddings, option_targets
from mosaic_alm.featurizer import AudioFeaturizer
ROOT = os.environ["DATA"]
model = load_alm(sys.argv[1]); model.eval()
fz = AudioFeaturizer.for_model(model)
for split in ("train", "test"):
    recs = [r for r in load_records(ROOT, split, None, "closed", 0, 0, None)]
    by = collections.defaultdict(list)
    for r in recs: by[r["qtype"]].append(r)
    for q, rs in sorted(by.items()):
        rs = rs[:300]
        words, answer, mask = option_targets(rs)
        opts = F.normalize(word_embeddings(model, words), dim=-1)
        with torch.no_grad():
            z = model.projector(fz.tokens([r["audio_path"] for r in rs]).float()).float()
        zn = F.normalize(z, dim=-1)
        mean = (F.normalize(z.mean(1), dim=-1) @ opts.T).masked_fill(~mask, -9).argmax(-1)
        mx = (zn @ opts.T).amax(1).masked_fill(~mask, -9).argmax(-1)
        print(split, q, len(rs), "mean", round(float((mean == answer).float().mean()), 3), "max", round(float((mx == answer).float().mean()), 3))
