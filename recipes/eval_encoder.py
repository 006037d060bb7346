"""Recipe ``mosaic-alm eval-encoder``: frozen features + probes on the embedded tasks (or any task config), with all
baselines.

For every encoder (pretrained checkpoints, a randomly initialised one with the same architecture) and every task,
features are extracted once (per-layer mean-pooled patch tokens, CLS excluded, and the last layer's tokens) and
probes are fitted on the train split, selected on valid, scored on every test split: the fair linear read-out on
the last layer and on every layer (standardised logistic regression, C chosen on valid: the MAE/AudioMAE
linear-probing protocol without an optimisation budget that could underfit), a learned weighted sum of layers and
an attentive probe. The MFCC baseline is read out by the same logistic regression on the same splits. Writes
``encoder_eval.json`` and a Markdown/HTML report.

The job reads top to bottom: :func:`evaluate` sets up the encoders, runs :func:`evaluate_task` per task
(load the clips, the MFCC baseline, then :func:`probe_encoder` per encoder) and saves with :func:`save_results`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from encoder.data.tasks import TaskConfig, load_task
from encoder.hf import resolve_encoder
from eval import probes as P
from eval.embeddings import extract_features, load_waves, make_probe, spectrogram_inputs
from eval.encoder_eval_config import EncoderEvalConfig, ProbeFitConfig  # noqa: F401 -- the job's config types
from eval.few_label import few_label_curve, runs_summary
from eval.metrics import confusion_matrix
from eval.mfcc import mfcc_features
from eval.probe_tables import accuracy_rows, few_label_section, format_table
from eval.probes import fit_logreg
from eval.results import (
    plot_confusion_matrix,
    plot_probe_by_layer,
    write_report,
    write_results,
)
from mosaic_core.config import load_recipe, to_plain
from mosaic_core.progress import progress_bar
from mosaic_core.runtime import precision_note, set_threads, use_bf16


def _splits(task) -> dict[str, list[dict]]:
    return {role: [task.rows[i] for i in idx.tolist()] for role, idx in task.splits.items()}


class _Tally:
    """What the evaluation gathers across tasks: the numbers, few-label curves, layer curves, figures, unreadable
    clips."""

    def __init__(self):
        self.numbers, self.few_label, self.layer_curves, self.figures, self.bad_clips = {}, {}, {}, [], []


# ------------------------------------------------------------------------------------------------------ setup
def setup_encoders(cfg: EncoderEvalConfig) -> dict:
    """Every encoder to evaluate, in eval mode (a random one seeded, with the first folder's architecture)."""
    folders = [v for v in cfg.encoders.values() if not v.startswith("random")]
    reference = folders[0] if folders else None
    encoders = {}
    for name, spec in cfg.encoders.items():
        torch.manual_seed(cfg.seed)  # a random encoder's weights
        encoders[name] = resolve_encoder(spec, reference=reference).eval()
    return encoders


def _load_clips(task, tally: _Tally) -> tuple[dict, dict]:
    """The task's waves and label tensors per split (unreadable clips left out and tallied)."""
    splits = _splits(task)
    print(f"[eval-encoder] {task.name}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()), flush=True)
    waves, labels = {}, {}
    for role, rows in splits.items():
        w, bad = load_waves(rows)
        tally.bad_clips += bad
        keep = [i for i, x in enumerate(w) if x is not None]
        waves[role] = [w[i] for i in keep]
        labels[role] = torch.tensor([task.classes.index(rows[i]["label"]) for i in keep])
    return waves, labels


def _mfcc_baseline(waves: dict, labels: dict, test_roles: list[str], seed: int) -> tuple[dict, dict]:
    """The MFCC statistics of every split (:func:`eval.mfcc.mfcc_features`) read out by the fair linear read-out,
    as :func:`eval.mfcc.mfcc_logreg_baseline` does; returns (results by test split, the features by split)."""
    feats = {role: mfcc_features([w.numpy() for w in ws]) for role, ws in waves.items()}
    readout = fit_logreg(feats["train"], labels["train"].numpy(), feats.get("valid"),
                         labels["valid"].numpy() if "valid" in labels else None, seed=seed)
    out = {role: {"accuracy": runs_summary([readout.evaluate(feats[role], labels[role].numpy())["accuracy"]]),
                  "C": readout.C} for role in test_roles}
    return out, feats


def _few_label(cfg: EncoderEvalConfig, feats: dict, labels: dict, all_labels: dict) -> dict:
    """The few-label curve of one encoder's (or MFCC's) features ``{split: [N, D]}``, with the all-label read-out
    (``all_labels``, already fitted) as its last point."""
    def pair(role):
        return np.asarray(feats[role]), labels[role].numpy()

    tests = {role: pair(role) for role in feats if role.startswith("test")}
    curve = few_label_curve(pair("train"), pair("valid") if "valid" in feats else None, tests, cfg.few_labels,
                            cfg.few_label_draws, cfg.seed)
    curve["all"] = {role: {"accuracy": all_labels[role]["accuracy"]} for role in tests}
    return curve


# ------------------------------------------------------------------------------------------------------- loop
def _linear_readout(feats, labels, test_roles, seed: int) -> tuple[dict, object]:
    """The fair read-out: convex, so one fit (probe seeds cannot change it)."""
    valid = feats.get("valid")
    readout = fit_logreg(feats["train"]["last"], labels["train"], None if valid is None else valid["last"],
                         labels.get("valid"), seed=seed)
    by_role = {}
    for role in test_roles:
        acc = readout.evaluate(feats[role]["last"], labels[role])["accuracy"]
        by_role[role] = {"accuracy": runs_summary([acc]), "C": readout.C}
    return by_role, readout


def _trained_probe(cfg, probe_name, feats, labels, test_roles, n_cls, bf16, bar, where: str) -> dict:
    """One probe kind fitted once per probe seed: accuracy mean ± std per test split (and a weighted probe's
    layer weights)."""
    valid = feats.get("valid")
    scores = {role: [] for role in test_roles}
    last_probe = None
    for s in cfg.probe_seeds:
        bar.set_postfix_str(f"{where} {probe_name} seed {s}", refresh=False)
        probe, key = make_probe(probe_name, feats["train"], n_cls)
        P.fit_probe(probe, feats["train"][key], labels["train"], valid[key] if valid is not None else None,
                    labels["valid"] if valid is not None else None, seed=int(s), bf16=bf16, **to_plain(cfg.probe))
        for role in test_roles:
            scores[role].append(P.evaluate_probe(probe, feats[role][key], labels[role])["accuracy"])
        last_probe = probe
        bar.update(1)
    out = {role: {"accuracy": runs_summary(scores[role])} for role in test_roles}
    if probe_name == "weighted" and last_probe is not None:
        out["layer_weights"] = [float(v) for v in last_probe.layer_weights()]
    return out


def probe_encoder(cfg: EncoderEvalConfig, task, enc_name: str, feats: dict, labels: dict, bf16: bool, bar,
                  tally: _Tally, first: bool) -> dict:
    """Every configured probe (and the layer sweep) on one encoder's features of one task."""
    test_roles = [r for r in feats if r.startswith("test")]
    r_enc = {}
    for probe_name in cfg.probes:
        if probe_name == "linear":
            r_enc["linear"], readout = _linear_readout(feats, labels, test_roles, cfg.seed)
            if first:
                cm = confusion_matrix(labels["test"].numpy(), readout.predict(feats["test"]["last"]),
                                      len(task.classes))
                tally.figures.append((f"{task.name}: confusion matrix ({enc_name}, linear read-out, test)",
                                      plot_confusion_matrix(cm, task.classes)))
            bar.update(1)
        else:
            r_enc[probe_name] = _trained_probe(cfg, probe_name, feats, labels, test_roles, len(task.classes), bf16,
                                               bar, f"{task.name} {enc_name}")
    if cfg.layer_sweep:
        valid = feats.get("valid")
        curve = P.linear_probe_by_layer(feats["train"]["layers"], labels["train"], feats["test"]["layers"],
                                        labels["test"], valid_x=None if valid is None else valid["layers"],
                                        valid_y=labels.get("valid"), seed=cfg.seed)
        r_enc["linear_by_layer_test"] = [float(v) for v in curve]
        tally.layer_curves.setdefault(task.name, {})[enc_name] = curve
    print(f"[eval-encoder] {task.name} {enc_name}: " + ", ".join(
        f"{p} {r_enc[p]['test']['accuracy']['mean']:.3f}" for p in cfg.probes), flush=True)
    return r_enc


def evaluate_task(cfg: EncoderEvalConfig, task_path: str, encoders: dict, bf16: bool, bar, tally: _Tally) -> None:
    """One task: its clips, the MFCC baseline, then every encoder's features and probes."""
    task = load_task(TaskConfig(config=task_path, data_root=cfg.data_root,
                                max_clips_per_split=cfg.max_clips_per_split, cache="never"), seed=cfg.seed)
    waves, labels = _load_clips(task, tally)
    res = tally.numbers.setdefault(task.name, {})
    few = tally.few_label.setdefault(task.name, {}) if cfg.few_labels else None
    if cfg.mfcc_baseline:
        res["mfcc_logreg"], mfcc_feats = _mfcc_baseline(waves, labels, [r for r in waves if r.startswith("test")],
                                                        cfg.seed)
        if few is not None:
            few["mfcc_logreg"] = _few_label(cfg, mfcc_feats, labels, res["mfcc_logreg"])
    inputs = {}  # spectrograms per preprocessing, shared by the encoders that use it
    for enc_name, model in encoders.items():
        fb = model.config.fbank_config(task.fbank.target_frames)
        key = repr(fb)
        if key not in inputs:
            inputs = {key: {role: spectrogram_inputs(w, fb) for role, w in waves.items()}}
        feats = {role: extract_features(model, x, fb, cfg.batch_size, bf16=bf16) for role, x in inputs[key].items()}
        res[enc_name] = probe_encoder(cfg, task, enc_name, feats, labels, bf16, bar, tally,
                                      first=enc_name == next(iter(encoders)))
        if few is not None and "linear" in res[enc_name]:
            few[enc_name] = _few_label(cfg, {role: f["last"] for role, f in feats.items()}, labels,
                                       res[enc_name]["linear"])


# ------------------------------------------------------------------------------------------------------- save
def save_results(cfg: EncoderEvalConfig, tally: _Tally, seconds: float) -> dict:
    """``encoder_eval.json`` and the Markdown/HTML report in the run folder; returns the results."""
    run = Path(cfg.run_dir)
    results = {"tasks": tally.numbers, "seconds": seconds, "bad_clips": tally.bad_clips,
               "encoders": dict(cfg.encoders)}
    if tally.few_label:
        results["few_label"] = {"labels_per_class": list(cfg.few_labels), "draws": cfg.few_label_draws,
                                "readout": "linear (last layer; C chosen on the whole valid split)",
                                "tasks": tally.few_label}
    write_results(run, "encoder_eval", results, to_plain(cfg), cfg.seed)
    summary = ("Accuracy on held-out splits. linear: the fair read-out (standardised logistic regression, C chosen "
               "on valid; convex, so one fit); the MFCC baseline is read out the same way; weighted / attentive: "
               f"probe seeds {cfg.probe_seeds}, mean ± std (n) where more than one ran. {seconds:.0f} s in all.")
    sections = [("Summary", [summary]), ("Accuracy", [accuracy_rows(tally.numbers)])]
    if tally.few_label:
        sections.append(few_label_section(results["few_label"]))
    for task_name, curves in tally.layer_curves.items():
        sections.append((f"{task_name}: linear probe accuracy by layer", [plot_probe_by_layer(curves)]))
    sections += [(title, [fig]) for title, fig in tally.figures]
    write_report(run, "Encoder evaluation", sections, name="encoder_eval")
    print(format_table(tally.numbers))
    return results


def evaluate(cfg: EncoderEvalConfig) -> dict:
    """Setup (threads, run folder, encoders), the loop over tasks, save."""
    set_threads(cfg.threads)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    bf16 = use_bf16(cfg.precision, torch.device("cpu"))
    print(f"[eval-encoder] feature extraction and probe fits: {precision_note(bf16, torch.device('cpu'))}", flush=True)
    encoders = setup_encoders(cfg)
    # one bar over every probe fit (task x encoder x probe x seed); ETA from the fits so far
    fits = sum(1 if p == "linear" else len(cfg.probe_seeds) for p in cfg.probes)
    bar = progress_bar(total=len(cfg.tasks) * len(encoders) * fits, desc="eval-encoder probes", unit="fit")
    tally = _Tally()
    for task_path in cfg.tasks:
        evaluate_task(cfg, task_path, encoders, bf16, bar, tally)
    bar.close()
    return save_results(cfg, tally, time.time() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mosaic-alm eval-encoder", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/eval/encoder_embedded.yaml")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    evaluate(load_recipe(EncoderEvalConfig, args.config, args.overrides)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
