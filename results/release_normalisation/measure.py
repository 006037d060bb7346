"""What feeding a frozen AudioMosaic encoder the released ``preprocess()``'s normalisation does, measured on an
encoder the kit pretrained with the normalisation the paper's weights were trained with.

    python results/release_normalisation/measure.py ENCODER DATA [--seeds 0,1,2] [--random-control] \
        [--out results/release_normalisation/results.json]

The reference training pipeline (and the kit, ``encoder.features.normalise``) feeds ``(x - mean) / (2 * std)``; the
``preprocess()`` shipped in the released Hugging Face repos feeds ``(x - mean) / std``. Because
``(x - mean) / std = 2 * ((x - mean) / (2 * std))`` exactly (padding happens before normalisation, so padded frames
obey it too), the released input is exactly twice the kit's: this script builds the kit's inputs with
``encoder.features.waveform_to_input`` (no library code changed), multiplies them by 2 for the released scale, and
checks the identity against a direct ``(pad_or_crop(fbank) - mean) / std`` on some clips.

For each embedded task (keywords, instruments, environment), pooled last-layer features (what the pipeline's fair
linear read-out reads, bf16 where the CPU is native as the pipeline does) are extracted under both normalisations;
the fair read-out (``eval.probes.fit_logreg``: standardised logistic regression, C chosen on valid) is scored under
  (a) trained: (x-mean)/(2 std) for train, valid and test;
  (b) released: (x-mean)/std for train, valid and test (a user who calls preprocess() everywhere);
  (c) mixed: read-out fitted (and C chosen) on (x-mean)/(2 std), tested on (x-mean)/std (a released classifier fed
      preprocess() output);
  (d) reverse of (c), in results.json only: fitted on (x-mean)/std, tested on (x-mean)/(2 std).
The logistic regression (lbfgs) is deterministic, so the read-out seeds are run to show it (``deterministic``).
On every test clip it also reports the cosine between the pooled features under the two normalisations (last layer
and every layer), the relative L2 change of the last-layer tokens ||t_std - t_2std|| / ||t_2std||, and, as a noise
floor, the same two numbers between bf16 and fp32 features under the trained normalisation. The JSON is written
through ``eval.results.write_results``: the measurements under ``numbers``, the encoder, data, seeds, conditions and
task recipe files under ``config`` (with the commit at the start of the run; ``git`` is read at its end), versions,
machine and command line.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not

TASKS = ("keywords", "instruments", "environment")
CONDITIONS = {"a_trained": ("2std", "2std"), "b_released": ("std", "std"), "c_mixed": ("2std", "std"),
              "d_reverse": ("std", "2std")}


def _cos(a, b):
    import torch
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def _rel_l2(t, ref):
    return (t - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)


def _stats(v) -> dict:
    v = np.asarray(v, dtype=np.float64)
    return {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4),
            "p05": round(float(np.quantile(v, 0.05)), 4), "max": round(float(v.max()), 4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("encoder")
    p.add_argument("data")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--random-control", action="store_true", help="also measure random:tiny (torch.manual_seed(0))")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-per-split", type=int, default=0, help="smoke test: first N clips of each split (0 = all)")
    p.add_argument("--out", default="results/release_normalisation/results.json")
    args = p.parse_args(argv)
    import torch

    from encoder.data.tasks import TaskConfig, load_task
    from encoder.features import fbank, pad_or_crop
    from encoder.hf import resolve_encoder
    from eval.embeddings import extract_features, spectrogram_inputs, split_waves
    from eval.probes import fit_logreg
    from eval.results import write_results
    from mosaic_core.runtime import precision_note, use_bf16

    torch.set_num_threads(1)
    bf16 = use_bf16("auto", torch.device("cpu"))
    seeds = [int(s) for s in args.seeds.split(",")]
    encoders = {"audiomosaic": args.encoder}
    if args.random_control:
        encoders["random"] = "random:tiny"
    t0 = time.time()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()  # at start
    out: dict = {"encoder": args.encoder, "data": args.data, "seeds": seeds,
                 "precision": precision_note(bf16, torch.device("cpu")),
                 "conditions": {k: {"fit_and_valid": v[0], "test": v[1]} for k, v in CONDITIONS.items()},
                 "identity": "(x-mean)/std == 2 * (x-mean)/(2 std): released input = 2 x kit input", "tasks": {}}
    for name in TASKS:
        tt = time.time()
        task = load_task(TaskConfig(config=f"configs/data/embedded_{name}.yaml", data_root=args.data, cache="never"))
        split = split_waves(task)
        if args.max_per_split:
            split = {role: (ws[:args.max_per_split], y[:args.max_per_split]) for role, (ws, y) in split.items()}
        res = out["tasks"][name] = {"n": {role: len(y) for role, (_, y) in split.items()}}
        for enc, spec in encoders.items():
            torch.manual_seed(0)
            model = resolve_encoder(spec, reference=args.encoder).eval()
            fb = model.config.fbank_config(task.fbank.target_frames)
            inputs = {role: spectrogram_inputs(ws, fb) for role, (ws, _) in split.items()}  # (x - mean) / (2 std)
            if enc == "audiomosaic":  # the identity, against a direct (x - mean) / std on the first 32 test clips
                ws = split["test"][0][:32]
                direct = torch.stack([(pad_or_crop(fbank(w - w.mean(), fb), fb.target_frames) - fb.mean) / fb.std
                                      for w in ws])
                res["identity_max_abs_diff"] = float((direct - 2 * inputs["test"][:32]).abs().max())
                res["input_scale"] = {"kit_2std_rms": round(float(inputs["test"].pow(2).mean().sqrt()), 4),
                                      "released_std_rms": round(float((2 * inputs["test"]).pow(2).mean().sqrt()), 4)}
            feats: dict = {"2std": {}, "std": {}}
            geometry: dict = {}
            for role, x in inputs.items():
                right = extract_features(model, x, fb, args.batch_size, bf16=bf16)
                wrong = extract_features(model, 2 * x, fb, args.batch_size, bf16=bf16)
                feats["2std"][role], feats["std"][role] = right["last"].numpy(), wrong["last"].numpy()
                if role.startswith("test"):
                    g = geometry[role] = {
                        "pooled_cosine_last": _stats(_cos(right["last"], wrong["last"])),
                        "pooled_cosine_by_layer": [round(float(c), 4) for c in
                                                   _cos(right["layers"], wrong["layers"]).mean(0)],
                        "token_rel_l2": _stats(_rel_l2(wrong["tokens"], right["tokens"])),
                        "pooled_rel_l2": _stats(_rel_l2(wrong["last"], right["last"])),
                        "pooled_norm_ratio": round(float((wrong["last"].norm(dim=1) / right["last"].norm(dim=1))
                                                         .mean()), 4)}
                    if bf16:  # noise floor: bf16 vs fp32 features, trained normalisation
                        ref = extract_features(model, x, fb, args.batch_size, bf16=False)
                        g["noise_floor_bf16_vs_fp32"] = {
                            "pooled_cosine_last": _stats(_cos(right["last"], ref["last"])),
                            "token_rel_l2": _stats(_rel_l2(right["tokens"], ref["tokens"]))}
                del right, wrong
            readouts = {fit: [fit_logreg(feats[fit]["train"], split["train"][1].numpy(), feats[fit]["valid"],
                                         split["valid"][1].numpy(), seed=seed) for seed in seeds]
                        for fit in ("2std", "std")}  # (a) and (c) share the read-out fitted on (x-mean)/(2 std)
            acc: dict = {}
            for cond, (fit, test) in CONDITIONS.items():
                per_seed = {role: [r.evaluate(feats[test][role], split[role][1].numpy())["accuracy"]
                                   for r in readouts[fit]] for role in inputs if role.startswith("test")}
                acc[cond] = {role: {"mean": round(float(np.mean(a)), 4), "std": round(float(np.std(a)), 4),
                                    "per_seed": [round(float(v), 4) for v in a],
                                    "deterministic": bool(len(set(a)) == 1)} for role, a in per_seed.items()}
                acc[cond]["C"] = [r.C for r in readouts[fit]]
            res[enc] = {"accuracy": acc, "geometry": geometry}
            print(json.dumps({"task": name, "encoder": enc, "s": round(time.time() - tt),
                              **{c: {r: v["mean"] for r, v in a.items() if r != "C"} for c, a in acc.items()},
                              "cos": {r: g["pooled_cosine_last"]["mean"] for r, g in geometry.items()}}), flush=True)
    out["seconds"] = round(time.time() - t0)
    out["threads"] = torch.get_num_threads()
    config = {"encoder": out.pop("encoder"), "data": out.pop("data"), "seeds": out.pop("seeds"),
              "random_control": args.random_control, "batch_size": args.batch_size,
              "max_per_split": args.max_per_split, "conditions": out.pop("conditions"),
              "task_configs": [f"configs/data/embedded_{name}.yaml" for name in TASKS],
              "commit_at_start": commit}  # git.commit is read when the JSON is written, at the end
    write_results(Path(args.out).parent, Path(args.out).stem, out, config, seed=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
