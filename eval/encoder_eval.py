"""Encoder evaluation on the embedded tasks (or any task config): frozen features + probes, all baselines.

For every encoder (pretrained checkpoints, a randomly initialised one with the same architecture) and every task,
features are extracted once (per-layer mean-pooled patch tokens, CLS excluded, and the last layer's tokens) and
probes are fitted on the train split, selected on valid, scored on every test split: a linear probe on the last
layer, a linear probe per layer, a learned weighted sum of layers and an attentive probe. The MFCC + logistic
regression baseline runs on the same splits. Writes ``encoder_eval.json`` and a Markdown/HTML report.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from encoder.config import ConfigError, load_config
from encoder.data.manifest import load_classes, read_manifest
from encoder.features import AudioError, FbankConfig, load_audio, waveform_to_input

from . import probes as P
from .metrics import confusion_matrix
from .mfcc import mfcc_logreg_baseline
from .report import plot_confusion_matrix, plot_probe_by_layer, write_report, write_results

TOP_KEYS = {"seed", "run_dir", "data_root", "tasks", "encoders", "mfcc_baseline", "probes", "layer_sweep", "probe",
            "probe_seeds", "max_clips_per_split", "batch_size", "threads"}


def load_task(task_cfg_path: str, data_root: str, max_clips: int = 0, seed: int = 0) -> dict:
    t = load_config(task_cfg_path)
    root = Path(data_root)
    classes = load_classes(root / t["classes"])
    rows = read_manifest(root / t["manifest"], classes=classes)
    splits = {}
    for role, name in t["splits"].items():
        sel = [r for r in rows if r["split"] == name]
        if max_clips and len(sel) > max_clips:
            idx = np.random.default_rng(seed).permutation(len(sel))[:max_clips]
            sel = [sel[i] for i in sorted(idx)]
        if sel:
            splits[role] = sel
    for need in ("train", "test"):
        if need not in splits:
            raise ConfigError(f"task {t['name']}: no clips in split {t['splits'].get(need)!r}")
    return {"name": t["name"], "classes": classes, "target_frames": int(t["target_frames"]), "splits": splits}


def load_waves(rows) -> tuple[list[torch.Tensor], list[dict]]:
    waves, bad = [], []
    for r in rows:
        try:
            waves.append(load_audio(r["path"]))
        except AudioError as exc:
            waves.append(None)
            bad.append({"id": r["id"], "error": str(exc)})
    return waves, bad


def load_encoder(spec: str, reference: str | None, seed: int):
    from encoder.hf import AudioMosaicConfig, AudioMosaicModel

    if spec == "random":
        if reference is None:
            raise ConfigError("encoders: 'random' needs at least one checkpoint folder to copy the architecture from")
        cfg = AudioMosaicConfig.from_pretrained(reference)
        torch.manual_seed(seed)
        return AudioMosaicModel(cfg).eval()
    if not (Path(spec) / "config.json").is_file():
        raise ConfigError(f"encoder folder {spec} has no config.json (expected a folder written by pretraining)")
    return AudioMosaicModel.from_pretrained(spec).eval()


@torch.no_grad()
def extract(model, waves, fb: FbankConfig, batch_size: int) -> dict:
    """Per-layer pooled features [N, L+1, D] and last-layer tokens [N, K, D] (time-major)."""
    layers, tokens = [], []
    for i in range(0, len(waves), batch_size):
        x = torch.stack([waveform_to_input(w, fb) for w in waves[i:i + batch_size]])
        out = model.encoder.forward_features(x, output_hidden_states=True)
        pooled = [h[:, 1:].mean(1) for h in out["hidden_states"][:-1]] + [out["pooled"]]
        layers.append(torch.stack(pooled, dim=1))
        tokens.append(out["tokens"])
    layers = torch.cat(layers)
    return {"layers": layers, "last": layers[:, -1], "tokens": torch.cat(tokens)}


def _mean_std(xs):
    a = np.asarray(xs, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "runs": [float(v) for v in a]}


def evaluate(cfg: dict) -> dict:
    unknown = sorted(set(cfg) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in encoder-eval config")
    if int(cfg.get("threads", 0)) > 0:
        torch.set_num_threads(int(cfg["threads"]))
    run = Path(cfg["run_dir"])
    run.mkdir(parents=True, exist_ok=True)
    seed = int(cfg["seed"])
    folders = [v for v in cfg["encoders"].values() if v != "random"]
    reference = folders[0] if folders else None
    pk = dict(cfg["probe"])
    numbers, layer_curves, figures, bad_clips = {}, {}, [], []
    t0 = time.time()
    encoders = {name: load_encoder(spec, reference, seed) for name, spec in cfg["encoders"].items()}
    for task_path in cfg["tasks"]:
        task = load_task(task_path, cfg["data_root"], int(cfg["max_clips_per_split"]), seed)
        name, n_cls = task["name"], len(task["classes"])
        print(f"[eval-encoder] {name}: " + ", ".join(f"{k} {len(v)}" for k, v in task["splits"].items()), flush=True)
        waves, labels = {}, {}
        for role, rows in task["splits"].items():
            w, bad = load_waves(rows)
            bad_clips += bad
            keep = [i for i, x in enumerate(w) if x is not None]
            waves[role] = [w[i] for i in keep]
            labels[role] = torch.tensor([task["classes"].index(rows[i]["label"]) for i in keep])
        res = numbers.setdefault(name, {})
        test_roles = [r for r in waves if r.startswith("test")]
        if cfg.get("mfcc_baseline", True):
            for role in test_roles:
                out = mfcc_logreg_baseline([w.numpy() for w in waves["train"]], labels["train"].numpy(),
                                           [w.numpy() for w in waves[role]], labels[role].numpy(), seed=seed)
                res.setdefault("mfcc_logreg", {})[role] = {"accuracy": _mean_std([out["accuracy"]])}
        for enc_name, model in encoders.items():
            fb = model.config.fbank_config(task["target_frames"])
            feats = {role: extract(model, waves[role], fb, int(cfg["batch_size"])) for role in waves}
            valid = feats.get("valid")
            r_enc = res.setdefault(enc_name, {})
            for probe_name in cfg["probes"]:
                scores = {role: [] for role in test_roles}
                last_probe = None
                for s in cfg["probe_seeds"]:
                    probe, key = _make_probe(probe_name, feats["train"], n_cls)
                    P.fit_probe(probe, feats["train"][key], labels["train"],
                                valid[key] if valid is not None else None,
                                labels["valid"] if valid is not None else None, seed=int(s), **pk)
                    for role in test_roles:
                        scores[role].append(P.evaluate_probe(probe, feats[role][key], labels[role])["accuracy"])
                    last_probe = (probe, key)
                for role in test_roles:
                    r_enc.setdefault(probe_name, {})[role] = {"accuracy": _mean_std(scores[role])}
                if probe_name == "weighted" and last_probe is not None:
                    r_enc["weighted"]["layer_weights"] = [float(v) for v in last_probe[0].layer_weights()]
                if probe_name == "linear" and enc_name == next(iter(encoders)):
                    probe, key = last_probe
                    pred = P.predict(probe, feats["test"][key]).argmax(1).numpy()
                    cm = confusion_matrix(labels["test"].numpy(), pred, n_cls)
                    figures.append((f"{name}: confusion matrix ({enc_name}, linear probe, test)",
                                    plot_confusion_matrix(cm, task["classes"])))
            if cfg.get("layer_sweep", True):
                curve = P.linear_probe_by_layer(feats["train"]["layers"], labels["train"], feats["test"]["layers"],
                                                labels["test"], n_cls, seed=seed, **pk)
                r_enc["linear_by_layer_test"] = [float(v) for v in curve]
                layer_curves.setdefault(name, {})[enc_name] = curve
            print(f"[eval-encoder] {name} {enc_name}: " + ", ".join(
                f"{p} {r_enc[p]['test']['accuracy']['mean']:.3f}" for p in cfg["probes"]), flush=True)
    seconds = time.time() - t0
    results = {"tasks": numbers, "seconds": seconds, "bad_clips": bad_clips,
               "encoders": {k: v for k, v in cfg["encoders"].items()}}
    write_results(run, "encoder_eval", results, cfg, seed)
    sections = [("Summary", [f"Probe accuracy on held-out splits (mean ± std over probe seeds {cfg['probe_seeds']}); "
                             f"{seconds:.0f} s in all."]), ("Accuracy", [_table(numbers)])]
    for task_name, curves in layer_curves.items():
        sections.append((f"{task_name}: linear probe accuracy by layer", [plot_probe_by_layer(curves)]))
    sections += [(title, [fig]) for title, fig in figures]
    write_report(run, "Encoder evaluation", sections, name="encoder_eval")
    print(format_table(numbers))
    return results


def _make_probe(kind: str, train_feats: dict, n_cls: int):
    layers = train_feats["layers"]
    if kind == "linear":
        return P.LinearProbe(layers.shape[2], n_cls), "last"
    if kind == "weighted":
        return P.WeightedLayerProbe(layers.shape[1], layers.shape[2], n_cls), "layers"
    if kind == "attentive":
        return P.AttentiveProbe(layers.shape[2], n_cls, num_heads=_heads(layers.shape[2])), "tokens"
    raise ConfigError(f"unknown probe {kind!r}; choose linear, weighted or attentive")


def _heads(dim: int) -> int:
    for h in (8, 6, 4, 3, 2, 1):
        if dim % h == 0:
            return h
    return 1


def _table(numbers: dict) -> dict:
    """{"encoder / probe": {"task split": "mean ± std"}}; the MFCC baseline has no probe level."""
    rows = {}
    for task, by_enc in numbers.items():
        for enc, by_probe in by_enc.items():
            items = [("logreg", by_probe)] if enc == "mfcc_logreg" else by_probe.items()
            for probe, by_role in items:
                if not isinstance(by_role, dict):
                    continue
                for role, m in by_role.items():
                    if isinstance(m, dict) and "accuracy" in m:
                        a = m["accuracy"]
                        rows.setdefault(f"{enc} / {probe}", {})[f"{task} {role}"] = f"{a['mean']:.3f} ± {a['std']:.3f}"
    return rows


def format_table(numbers: dict) -> str:
    rows = _table(numbers)
    cols = sorted({c for r in rows.values() for c in r})
    lines = ["| encoder / probe | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(r.get(c, "") for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mosaic-alm eval-encoder", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/eval/encoder_embedded.yaml")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    evaluate(load_config(args.config, args.overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
