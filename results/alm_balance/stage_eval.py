"""One ALM stage as the default pipeline trained it (stage 3 from a fresh projector, the recipe of ``--recipe``),
then closed QA on the pipeline's 120 test questions (15 per question type), with the per-question answers.

    DATA=... ENCODER=... python results/alm_balance/stage_eval.py OUT [--recipe results/alm_balance/recipe.yaml] \
        [override ...]

The recipe file names the stage config and its overrides (``results/alm_balance/recipe.yaml``: what the committed
``balance_*.json`` recorded); the command line's overrides replace the recipe's value of the same key. Writes
``OUT/qa.json`` through ``eval.results.write_results`` (commit, versions, machine, command line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--recipe", default="results/alm_balance/recipe.yaml")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    import torch

    from eval.alm_qa import evaluate_closed, sample_per_qtype
    from eval.results import write_results
    from mosaic_alm.artifact import load_alm
    from mosaic_alm.data import load_records, question_text
    from mosaic_alm.generation import generate_answers
    from mosaic_core.config import load_config, read_yaml
    from recipes.train_alm import train_stage

    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    root, enc = os.environ["DATA"], os.environ["ENCODER"]
    recipe_file = read_yaml(args.recipe)
    given = {o.split("=")[0] for o in args.overrides}
    recipe = [o for o in recipe_file["overrides"] if o.split("=")[0] not in given]
    cfg = load_config(recipe_file["config"], [f"data.root={root}", f"audio.encoder={enc}", "train.init_from=null",
                                              "train.examples=1000", f"output_dir={args.out}", "name=x",
                                              "train.eval_batches=0", *recipe, *args.overrides])
    s = train_stage(cfg, quiet=True)
    print("train", s["steps"], s["train_seconds"], s["first_loss"], s["last_loss"], s.get("align"), flush=True)
    model = load_alm(s["artifact"])
    model.eval()
    test = sample_per_qtype(load_records(root, "test", None, "closed", 0, 0, None), 120, 0)
    res = evaluate_closed(model, test)
    audio = [r["audio_path"] if model.cfg.audio.enabled else None for r in test]
    preds = generate_answers(model, audio, [question_text(r) for r in test], batch_size=16, max_new_tokens=8)
    res["answers"] = [dict(id=r["id"], qtype=r["qtype"], label=r["output"], prediction=p) for r, p in zip(test, preds)]
    res["train"] = json.loads(json.dumps({k: v for k, v in s.items() if k != "artifact"}, default=str))
    print(json.dumps({q: round(v.get("exact_match", 0), 3) for q, v in res["per_qtype"].items()}))
    print("overall", res["overall"], flush=True)
    config = {"recipe_file": args.recipe, "config_file": recipe_file["config"], "recipe": recipe,
              "overrides": args.overrides, "data": root, "encoder": enc}
    write_results(args.out, "qa", res, config, seed=int(cfg.get("seed", 0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
