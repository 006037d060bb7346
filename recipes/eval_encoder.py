"""Recipe ``mosaic-alm eval-encoder``: frozen features + probes on the embedded tasks (or any task config), with all
baselines.

For every encoder (pretrained checkpoints, a randomly initialised one with the same architecture) and every task,
features are extracted once (per-layer mean-pooled patch tokens, CLS excluded, and the last layer's tokens) and
probes are fitted on the train split, selected on valid, scored on every test split: the fair linear read-out on
the last layer and on every layer (standardised logistic regression, C chosen on valid: the MAE/AudioMAE
linear-probing protocol without an optimisation budget that could underfit), a learned weighted sum of layers and
an attentive probe. The MFCC baseline is read out by the same logistic regression on the same splits. Writes ``encoder_eval.json`` and a Markdown/HTML report.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from encoder.data.tasks import TaskConfig, load_task
from encoder.hf import resolve_encoder
from eval import probes as P
from eval.embeddings import extract_features, load_waves, make_probe, spectrogram_inputs
from eval.metrics import confusion_matrix
from eval.mfcc import mfcc_logreg_baseline
from eval.probes import fit_logreg
from eval.results import (
    mean_std,
    plot_confusion_matrix,
    plot_probe_by_layer,
    write_report,
    write_results,
)
from mosaic_core.config import (
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    load_recipe,
    to_plain,
)
from mosaic_core.progress import progress_bar
from mosaic_core.runtime import precision_note, set_threads, use_bf16
from mosaic_core.tables import markdown_table


@dataclass
class ProbeFitConfig:
    epochs: PositiveInt = 60
    lr: PositiveFloat = 1e-3
    weight_decay: float = 0.05
    batch_size: PositiveInt = 256


@dataclass
class EncoderEvalConfig:
    seed: int = 0
    run_dir: str = "runs/eval-encoder"
    data_root: str = "data/embedded-full"
    tasks: list[str] = field(default_factory=list)  # data recipes (configs/data/*.yaml)
    encoders: dict[str, str] = field(default_factory=dict)  # name -> folder, "random" or "random:<size>"
    mfcc_baseline: bool = True
    probes: list[Literal["linear", "weighted", "attentive"]] = field(default_factory=lambda: ["linear"])
    layer_sweep: bool = True  # linear probe on every layer (probe accuracy by layer)
    probe: ProbeFitConfig = field(default_factory=ProbeFitConfig)
    probe_seeds: list[int] = field(default_factory=lambda: [0])
    max_clips_per_split: NonNegInt = 0  # > 0 subsamples each split (quick runs)
    batch_size: PositiveInt = 64
    threads: NonNegInt = 0  # torch threads (tiny probes run fastest on one thread; 0 = default)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # feature extraction and probe fits; auto: bf16 where the
    #                                                      CPU/GPU computes it natively


def _splits(task) -> dict[str, list[dict]]:
    return {role: [task.rows[i] for i in idx.tolist()] for role, idx in task.splits.items()}


def _mean_std(xs):
    a = np.asarray(xs, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "runs": [float(v) for v in a]}


def evaluate(cfg: EncoderEvalConfig) -> dict:
    set_threads(cfg.threads)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed
    folders = [v for v in cfg.encoders.values() if not v.startswith("random")]
    reference = folders[0] if folders else None
    pk = to_plain(cfg.probe)
    numbers, layer_curves, figures, bad_clips = {}, {}, [], []
    t0 = time.time()
    bf16 = use_bf16(cfg.precision, torch.device("cpu"))
    print(f"[eval-encoder] feature extraction and probe fits: {precision_note(bf16, torch.device('cpu'))}", flush=True)
    encoders = {}
    for name, spec in cfg.encoders.items():
        torch.manual_seed(seed)  # a random encoder's weights
        encoders[name] = resolve_encoder(spec, reference=reference).eval()
    # one bar over every probe fit (task x encoder x probe x seed); ETA from the fits so far
    fits = sum(1 if p == "linear" else len(cfg.probe_seeds) for p in cfg.probes)
    bar = progress_bar(total=len(cfg.tasks) * len(encoders) * fits, desc="eval-encoder probes", unit="fit")
    for task_path in cfg.tasks:
        task = load_task(TaskConfig(config=task_path, data_root=cfg.data_root,
                                    max_clips_per_split=cfg.max_clips_per_split, cache="never"), seed=seed)
        name, classes, n_cls = task.name, task.classes, len(task.classes)
        splits = _splits(task)
        print(f"[eval-encoder] {name}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()), flush=True)
        waves, labels = {}, {}
        for role, rows in splits.items():
            w, bad = load_waves(rows)
            bad_clips += bad
            keep = [i for i, x in enumerate(w) if x is not None]
            waves[role] = [w[i] for i in keep]
            labels[role] = torch.tensor([classes.index(rows[i]["label"]) for i in keep])
        res = numbers.setdefault(name, {})
        test_roles = [r for r in waves if r.startswith("test")]
        if cfg.mfcc_baseline:
            numpy_waves = {role: [w.numpy() for w in ws] for role, ws in waves.items()}
            for role in test_roles:
                out = mfcc_logreg_baseline(numpy_waves["train"], labels["train"].numpy(), numpy_waves[role],
                                           labels[role].numpy(), valid_wavs=numpy_waves.get("valid"),
                                           valid_y=labels["valid"].numpy() if "valid" in labels else None, seed=seed)
                res.setdefault("mfcc_logreg", {})[role] = {"accuracy": _mean_std([out["accuracy"]]), "C": out["C"]}
        inputs = {}  # spectrograms per preprocessing, shared by the encoders that use it
        for enc_name, model in encoders.items():
            fb = model.config.fbank_config(task.fbank.target_frames)
            key = repr(fb)
            if key not in inputs:
                inputs = {key: {role: spectrogram_inputs(w, fb) for role, w in waves.items()}}
            feats = {role: extract_features(model, x, fb, cfg.batch_size, bf16=bf16)
                     for role, x in inputs[key].items()}
            valid = feats.get("valid")
            r_enc = res.setdefault(enc_name, {})
            for probe_name in cfg.probes:
                if probe_name == "linear":  # the fair read-out: convex, so one fit (probe seeds cannot change it)
                    readout = fit_logreg(feats["train"]["last"], labels["train"],
                                         None if valid is None else valid["last"], labels.get("valid"), seed=seed)
                    for role in test_roles:
                        acc = readout.evaluate(feats[role]["last"], labels[role])["accuracy"]
                        r_enc.setdefault("linear", {})[role] = {"accuracy": _mean_std([acc]), "C": readout.C}
                    if enc_name == next(iter(encoders)):
                        pred = readout.predict(feats["test"]["last"])
                        cm = confusion_matrix(labels["test"].numpy(), pred, n_cls)
                        figures.append((f"{name}: confusion matrix ({enc_name}, linear read-out, test)",
                                        plot_confusion_matrix(cm, classes)))
                    bar.update(1)
                    continue
                scores = {role: [] for role in test_roles}
                last_probe = None
                for s in cfg.probe_seeds:
                    bar.set_postfix_str(f"{name} {enc_name} {probe_name} seed {s}", refresh=False)
                    probe, key = make_probe(probe_name, feats["train"], n_cls)
                    P.fit_probe(probe, feats["train"][key], labels["train"],
                                valid[key] if valid is not None else None,
                                labels["valid"] if valid is not None else None, seed=int(s), bf16=bf16, **pk)
                    for role in test_roles:
                        scores[role].append(P.evaluate_probe(probe, feats[role][key], labels[role])["accuracy"])
                    last_probe = (probe, key)
                    bar.update(1)
                for role in test_roles:
                    r_enc.setdefault(probe_name, {})[role] = {"accuracy": _mean_std(scores[role])}
                if probe_name == "weighted" and last_probe is not None:
                    r_enc["weighted"]["layer_weights"] = [float(v) for v in last_probe[0].layer_weights()]
            if cfg.layer_sweep:
                curve = P.linear_probe_by_layer(feats["train"]["layers"], labels["train"], feats["test"]["layers"],
                                                labels["test"], valid_x=None if valid is None else valid["layers"],
                                                valid_y=labels.get("valid"), seed=seed)
                r_enc["linear_by_layer_test"] = [float(v) for v in curve]
                layer_curves.setdefault(name, {})[enc_name] = curve
            print(f"[eval-encoder] {name} {enc_name}: " + ", ".join(
                f"{p} {r_enc[p]['test']['accuracy']['mean']:.3f}" for p in cfg.probes), flush=True)
    bar.close()
    seconds = time.time() - t0
    results = {"tasks": numbers, "seconds": seconds, "bad_clips": bad_clips,
               "encoders": dict(cfg.encoders)}
    write_results(run, "encoder_eval", results, to_plain(cfg), seed)
    summary = ("Accuracy on held-out splits. linear: the fair read-out (standardised logistic regression, C chosen "
               "on valid; convex, so one fit); the MFCC baseline is read out the same way; weighted / attentive: "
               f"probe seeds {cfg.probe_seeds}, mean ± std (n) where more than one ran. {seconds:.0f} s in all.")
    sections = [("Summary", [summary]), ("Accuracy", [accuracy_rows(numbers)])]
    for task_name, curves in layer_curves.items():
        sections.append((f"{task_name}: linear probe accuracy by layer", [plot_probe_by_layer(curves)]))
    sections += [(title, [fig]) for title, fig in figures]
    write_report(run, "Encoder evaluation", sections, name="encoder_eval")
    print(format_table(numbers))
    return results


def accuracy_rows(numbers: dict) -> dict:
    """{"encoder / probe": {"task split": "mean ± std (n=k)" or "mean (1 seed)"}} (:func:`eval.results.mean_std`: no
    spread is claimed for one run); the MFCC baseline has no probe level."""
    rows = {}
    for task, by_enc in numbers.items():
        for enc, by_probe in by_enc.items():
            items = [("logreg", by_probe)] if enc == "mfcc_logreg" else by_probe.items()
            for probe, by_role in items:
                if not isinstance(by_role, dict):
                    continue
                for role, m in by_role.items():
                    if isinstance(m, dict) and "accuracy" in m:
                        rows.setdefault(f"{enc} / {probe}", {})[f"{task} {role}"] = mean_std(m["accuracy"])
    return rows


def format_table(numbers: dict) -> str:
    rows = accuracy_rows(numbers)
    cols = sorted({c for r in rows.values() for c in r})
    return markdown_table(["encoder / probe", *cols], [[name, *(r.get(c, "") for c in cols)] for name, r in rows.items()])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mosaic-alm eval-encoder", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/eval/encoder_embedded.yaml")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    evaluate(load_recipe(EncoderEvalConfig, args.config, args.overrides)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
