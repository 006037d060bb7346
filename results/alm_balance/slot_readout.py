"""Which option word each closed question's projected audio slots are nearest to, after an ALM stage: the option
picked by the mean slot and by the best single slot (cosine to the options' word embeddings), per split and type.

    DATA=... python results/alm_balance/slot_readout.py ARTIFACT [--out-dir DIR] [--name slot_readout]

Prints one line per split and question type (``slot_readout_balance_maxpool_pretrained.txt`` is that output for
the stage of ``balance_maxpool_pretrained.json``) and writes ``DIR/NAME.json`` through
``eval.results.write_results``. At most 300 questions of a type are read.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("--out-dir", default=None, help="where the JSON goes (default: the artifact's folder)")
    p.add_argument("--name", default="slot_readout")
    args = p.parse_args(argv)
    import torch
    import torch.nn.functional as F

    from eval.results import write_results
    from mosaic_alm.align import option_targets, word_embeddings
    from mosaic_alm.artifact import load_alm
    from mosaic_alm.data import load_records
    from mosaic_alm.featurizer import AudioFeaturizer

    torch.set_num_threads(1)
    root = os.environ["DATA"]
    model = load_alm(args.artifact)
    model.eval()
    fz = AudioFeaturizer.for_model(model)
    numbers: dict = {}
    for split in ("train", "test"):
        by = collections.defaultdict(list)
        for r in load_records(root, split, None, "closed", 0, 0, None):
            by[r["qtype"]].append(r)
        for q, rs in sorted(by.items()):
            rs = rs[:300]
            words, answer, mask = option_targets(rs)
            opts = F.normalize(word_embeddings(model, words), dim=-1)
            with torch.no_grad():
                z = model.projector(fz.tokens([r["audio_path"] for r in rs]).float()).float()
            zn = F.normalize(z, dim=-1)
            mean = (F.normalize(z.mean(1), dim=-1) @ opts.T).masked_fill(~mask, -9).argmax(-1)
            mx = (zn @ opts.T).amax(1).masked_fill(~mask, -9).argmax(-1)
            row = {"n": len(rs), "mean": round(float((mean == answer).float().mean()), 3),
                   "max": round(float((mx == answer).float().mean()), 3)}
            numbers.setdefault(split, {})[q] = row
            print(split, q, row["n"], "mean", row["mean"], "max", row["max"])
    write_results(args.out_dir or args.artifact, args.name, numbers, {"artifact": args.artifact, "data": root},
                  seed=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
