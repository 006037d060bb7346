"""Write the audio of the three tasks' train splits (no labels kept) as WebDataset shards beside the corpus, so one
pretraining can read both: ``DATA/unlabeled_train/``, 128 clips a shard, rows shuffled across tasks (seed 0).
    .venv/bin/python results/unlabeled_corpus/labeled_audio_shards.py DATA"""
import sys
from pathlib import Path

import numpy as np

from encoder.data.manifest import read_manifest
from encoder.data.shards import write_shards

data = Path(sys.argv[1] if len(sys.argv) > 1 else "data/embedded-full")
rows = []
for task in ("keywords", "instruments", "environment"):
    rows += [{"id": r["id"], "path": r["path"], "kind": f"labeled_{task}"}
             for r in read_manifest(data / task / "manifest.jsonl") if r.get("split") == "train"]
order = np.random.default_rng(0).permutation(len(rows))
index = write_shards([rows[i] for i in order], data / "unlabeled_train", shard_size=128, overwrite=True)
print(f"{index['num_clips']} clips in {len(index['shards'])} shards; skipped {len(index['skipped'])}")
