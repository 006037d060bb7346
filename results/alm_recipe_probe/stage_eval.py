"""One ALM stage (``configs/alm/stage2.yaml``, every closed question type) and closed QA on the pipeline's 120 test
questions (15 per question type).

    [DATA=data/embedded-full] python results/alm_recipe_probe/stage_eval.py OUT [override ...]

Writes ``OUT/qa.json`` through ``eval.results.write_results`` (commit, versions, machine, command line): the
evaluation under ``numbers``, the stage config file and the overrides under ``config``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not

CONFIG = "configs/alm/stage2.yaml"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        sys.exit(__doc__)
    out, overrides = argv[0], argv[1:]
    import torch

    from eval.alm_qa import evaluate_closed, sample_per_qtype
    from eval.results import write_results
    from mosaic_alm.artifact import load_alm
    from mosaic_alm.data import load_records
    from mosaic_core.config import load_config
    from recipes.train_alm import train_stage

    torch.set_num_threads(1)
    root = os.environ.get("DATA", "data/embedded-full")  # the embedded data the pipeline built
    cfg = load_config(CONFIG, [f"data.root={root}", "data.qtypes=null", f"output_dir={out}", "name=x",
                               "train.eval_batches=0", *overrides])
    s = train_stage(cfg, quiet=True)
    print("train", s["steps"], s["train_seconds"], s["first_loss"], s["last_loss"], flush=True)
    model = load_alm(s["artifact"])
    model.eval()
    test = sample_per_qtype(load_records(root, "test", None, "closed", 0, 0, None), 120, 0)
    res = evaluate_closed(model, test)
    print(json.dumps({q: round(v.get("exact_match", 0), 3) for q, v in res["per_qtype"].items()}))
    print("overall", res["overall"], flush=True)
    write_results(out, "qa", res, {"config_file": CONFIG, "overrides": overrides, "data": root},
                  seed=int(cfg.get("seed", 0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
