"""Fair linear-probe accuracy against pretraining minutes: every checkpoint of one or more pretraining runs.

    python bench/probe_curve.py RUN_DIR [RUN_DIR ...] [--data data/embedded-full] [--out results/probe_curve.json]

For each run folder (``mosaic-alm pretrain`` output with ``checkpoints/step_*`` kept, e.g. ``train.keep_last=0``)
every checkpoint's encoder is exported and read out by the kit's fair linear probe (standardised logistic
regression, C chosen on valid: :func:`eval.probes.fit_logreg`) on each embedded task's test splits. Minutes come
from the run's own ``elapsed_s`` history (wall time of the run; compare runs made side by side only). Step 0 (the
random initialisation of the same architecture) is included.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

TASKS = ("keywords", "instruments", "environment")


def encoders_of(run: Path, tmp: Path) -> list[tuple[int, float | None, Path | str]]:
    """(step, minutes, encoder folder) for every checkpoint of ``run``, after step 0: "random" (the same
    architecture, randomly initialised)."""
    from encoder import checkpoint as ckpt
    from encoder.pretraining import PretrainConfig, build_pretrain_model, export_encoder
    from mosaic_core.config import parse_config

    out = [(0, 0.0, "random")]
    for folder in sorted((run / "checkpoints").glob("step_*")):
        tensors, state = ckpt.load_checkpoint(folder)
        cfg = parse_config(PretrainConfig, state["config"], f"{folder} config")
        model = build_pretrain_model(cfg)
        model.load_state_dict(tensors["model"])
        dest = tmp / run.name / folder.name
        export_encoder(model.encoder, dest)
        hist = state["history"]
        minutes = hist[-1].get("elapsed_s") / 60 if hist and hist[-1].get("elapsed_s") is not None else None
        out.append((state["step"], minutes, dest))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", default="data/embedded-full")
    p.add_argument("--out", default="results/probe_curve.json")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    from encoder.data.tasks import TaskConfig, load_task
    from encoder.hf import resolve_encoder
    from eval.embeddings import extract_features, split_waves
    from eval.probes import fit_logreg
    from mosaic_core.runtime import use_bf16

    torch.set_num_threads(args.threads)
    bf16 = use_bf16("auto", torch.device("cpu"))
    tasks = {}
    for name in TASKS:
        task = load_task(TaskConfig(config=f"configs/data/embedded_{name}.yaml", data_root=args.data, cache="never"))
        tasks[name] = (task, split_waves(task))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in map(Path, args.runs):
            points = []
            points_to_read = encoders_of(run, Path(tmp))
            for step, minutes, folder in points_to_read:
                torch.manual_seed(0)
                model = resolve_encoder(str(folder), reference=str(points_to_read[-1][2])).eval()
                point = {"step": step, "minutes": None if minutes is None else round(minutes, 2)}
                for name, (task, split) in tasks.items():
                    fb = model.config.fbank_config(task.fbank.target_frames)
                    feats = {role: extract_features(model, w, fb, 64, bf16=bf16)["last"] for role, (w, _) in
                             split.items()}
                    readout = fit_logreg(feats["train"], split["train"][1], feats["valid"], split["valid"][1])
                    for role in split:
                        if role.startswith("test"):
                            acc = readout.evaluate(feats[role], split[role][1])["accuracy"]
                            point[f"{name} {role}"] = round(acc, 4)
                print(json.dumps({"run": str(run), **point}), flush=True)
                points.append(point)
            results[str(run)] = points
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"data": args.data, "runs": results,
                                          "command": "python bench/probe_curve.py " + " ".join(
                                              argv if argv is not None else sys.argv[1:])}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
