"""What the contrastive tiny encoder's pooled features hold: word vs voice, against random init and MAE.

    python results/speaker_shortcut/probe.py RUN_DIR DATA [--encoder NAME=FOLDER ...] \
        [--out results/speaker_shortcut/probe.json]

On the keywords test split (espeak-ng voices none of the encoders trained on; each voice says each word twice, in
two accents), the fair linear read-out (standardised logistic regression, C chosen on a held-out quarter) is fitted
on the first repetition and scored on the second, once predicting the word (20 classes) and once the voice
(the espeak-ng variant). Same features as the pipeline's probes: last layer, pooled, bf16. The JSON is written
through ``eval.results.write_results`` (commit, versions, machine, command line).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("data")
    p.add_argument("--out", default="results/speaker_shortcut/probe.json")
    p.add_argument("--encoder", action="append", default=[], metavar="NAME=FOLDER",
                   help="another encoder to read out (e.g. a pretraining variant's run/encoder)")
    args = p.parse_args(argv)
    import torch

    from encoder.hf import resolve_encoder
    from eval.embeddings import extract_features, load_waves
    from eval.probes import fit_logreg
    from eval.results import write_results
    from mosaic_core.runtime import use_bf16

    torch.set_num_threads(1)
    root = Path(args.data) / "keywords"
    rows = [json.loads(line) for line in (root / "manifest.jsonl").open()]
    rows = [dict(r, path=str(root / r["path"])) for r in rows if r["split"] == "test"]
    rep = np.array([int(r["id"].rsplit("_", 1)[1]) for r in rows])
    waves, bad = load_waves(rows)
    assert not bad, bad
    labels = {k: np.unique([r[field] for r in rows], return_inverse=True)[1]
              for k, field in (("word", "word"), ("voice", "speaker"))}
    rng = np.random.default_rng(0)
    first = np.flatnonzero(rep == 0)
    valid = rng.choice(first, len(first) // 4, replace=False)
    train, test = np.setdiff1d(first, valid), np.flatnonzero(rep == 1)
    encoders = {"audiomosaic": f"{args.run}/pretrain-audiomosaic/encoder", "mae": f"{args.run}/pretrain-mae/encoder",
                "random": "random:tiny", **dict(e.split("=", 1) for e in args.encoder)}
    out = {"n": {"train": len(train), "valid": len(valid), "test": len(test),
                 "words": len(set(labels["word"])), "voices": len(set(labels["voice"]))}, "accuracy": {}}
    for name, ref in encoders.items():
        torch.manual_seed(0)
        model = resolve_encoder(ref, reference=encoders["audiomosaic"]).eval()
        fb = model.config.fbank_config(128)
        x = extract_features(model, waves, fb, 64, bf16=use_bf16("auto", torch.device("cpu")))["last"]
        x = np.asarray(x)
        out["accuracy"][name] = {}
        for target, y in labels.items():
            r = fit_logreg(x[train], y[train], x[valid], y[valid])
            out["accuracy"][name][target] = round(r.evaluate(x[test], y[test])["accuracy"], 4)
        print(name, out["accuracy"][name], flush=True)
    config = {"run": args.run, "data": args.data, "encoders": encoders, "task": "keywords test split",
              "features": "last layer, pooled, bf16 where native"}
    write_results(Path(args.out).parent, Path(args.out).stem, out, config, seed=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
