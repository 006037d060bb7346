"""Recipe: one self-contained HTML report of a pipeline run folder, one command:

    mosaic-alm report RUN_DIR [--data DATA_ROOT] [--clips 8] [--no-model]

Reads whatever the run folder holds (the layout of ``recipes/pipeline.py``: ``pretrain-audiomosaic/`` and
``pretrain-mae/`` with ``history.json``, ``eval-encoder/encoder_eval.json``, ``alm/`` + ``alm_qa.json``,
``eval-alm/alm_eval.json``, ``pipeline.json``) and writes ``RUN_DIR/report.html`` with no external assets: figures
are inlined PNGs, clips inlined WAVs. A section whose inputs are missing says so in one line. The gallery takes
one held-out question per question type from the data's ``instructions/test.json`` and shows each clip's player,
spectrogram and the two masked views pretraining draws, the question, and, when the run holds an ALM artifact,
the model's answer and caption next to the references.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from eval.report import (
    Html,
    plot_grouped_bars,
    plot_probe_by_layer,
    plot_training_curves,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
GALLERY_SECONDS = 10.0  # a clip's audio and views in the report are cut to this length


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _missing(what: str) -> Html:
    return Html(f'<p class="note">Not in this run: {what}.</p>', f"_Not in this run: {what}._")


def _pretraining(run: Path) -> list:
    hist = {}
    for name, label in (("audiomosaic", "contrastive"), ("mae", "MAE")):
        rows = _json(run / f"pretrain-{name}" / "history.json") or []
        for key in ("loss", "accuracy"):
            vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            if vals:
                hist[f"{label} {key}"] = vals
    if not hist:
        return [_missing("pretrain-audiomosaic/history.json, pretrain-mae/history.json")]
    return [f"Logged training steps: {', '.join(f'{k} {len(v)}' for k, v in hist.items() if 'loss' in k)}.",
            plot_training_curves(hist, x_label="logged step", title="Pretraining (same data, steps and batch)")]


def _probes(run: Path) -> list[tuple[str, list]]:
    from .eval_encoder import accuracy_rows as probe_table

    res = _json(run / "eval-encoder" / "encoder_eval.json")
    if res is None:
        return [("Encoder probes", [_missing("eval-encoder/encoder_eval.json")])]
    tasks = res["numbers"]["tasks"]
    out = [("Encoder probes against MFCC and a random encoder",
            [("Held-out accuracy, mean ± std over probe seeds (mfcc_logreg: logistic regression on MFCC "
              "statistics; random: the same architecture, untrained)."), probe_table(tasks)])]
    layers = []
    for task, by_enc in tasks.items():
        curves = {e: v["linear_by_layer_test"] for e, v in by_enc.items() if v.get("linear_by_layer_test")}
        mfcc = by_enc.get("mfcc_logreg", {}).get("test", {}).get("accuracy", {}).get("mean")
        if curves:
            layers.append(plot_probe_by_layer(curves, baselines={"MFCC + LR": mfcc} if mfcc is not None else None,
                                              title=f"{task}: linear probe by layer (test)"))
    out.append(("Probe accuracy by layer", layers or [_missing("a layer sweep in encoder_eval.json")]))
    confusions = sorted((run / "eval-encoder").glob("encoder_eval_*confusion_matrix*.png"))  # as evaluated
    out.append(("Confusion matrices", confusions or [_missing("confusion matrices in eval-encoder/")]))
    return out


def _wilson(p: float, n: int) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(round(p * n), n).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _alm(run: Path) -> list:
    res = _json(run / "alm_qa.json")
    if res is None or not res.get("variants"):
        return [_missing("alm_qa.json (the ALM ablation)")]
    values, intervals, table = {}, {}, {}
    for v, r in res["variants"].items():
        per = {**r["accuracy"]["per_qtype"], "overall": r["accuracy"]["overall"]}
        for q, d in per.items():
            lo, hi = _wilson(d["exact_match"], d["count"])
            if q != "overall":
                values.setdefault(v, {})[q] = d["exact_match"]
                intervals.setdefault(v, {})[q] = (lo, hi)
            table.setdefault(q, {"n": d["count"]})[v] = f"{d['exact_match']:.3f} [{lo:.3f}, {hi:.3f}]"
    items = [(f"Closed-ended accuracy (normalised exact match) per question type with 95 % Wilson intervals, "
              f"{res.get('test_questions', '?')} held-out questions, steps per stage {res.get('steps_per_stage')}."),
             plot_grouped_bars(values, intervals, title="ALM: pretrained vs random encoder vs no audio"), table]
    comps = [{"comparison": name.replace("_", " "), "metric": k, "difference": f"{c['difference']:+.3f}",
              "95% CI (paired bootstrap)": f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]",
              "McNemar p": f"{c['mcnemar_p']:.2g}"}
             for name, by in res.get("comparisons", {}).items() for k, c in by.items()]
    return items + ([comps] if comps else [])


def _captions(run: Path) -> list:
    res = _json(run / "eval-alm" / "alm_eval.json")
    if res is None:
        return [_missing("eval-alm/alm_eval.json (the ALM evaluation)")]
    n = res["numbers"]
    items = [f"Artifact {n.get('artifact')}."]
    if "captioning" in n:
        items += [{k: v for k, v in n["captioning"].items() if isinstance(v, (int, float)) or v is None}]
        items += [f"{k} not computed: {why}." for k, why in n["captioning"].get("missing", {}).items()]
    else:
        items.append(_missing("caption metrics"))
    if n.get("caption_examples"):
        items.append([{"clip": e["id"], "caption": e["prediction"], "reference": " | ".join(e["references"])}
                      for e in n["caption_examples"]])
    if n.get("classify_by_generation"):
        items += ["Classification by generation (caption, then the nearest label by sentence embedding):",
                  {t: {k: v for k, v in d.items() if k != "embedder"} for t, d in n["classify_by_generation"].items()}]
    return items


def _timings(run: Path) -> list:
    res = _json(run / "pipeline.json")
    if res is None or not res.get("timings"):
        return [_missing("pipeline.json")]
    stages = res.get("stages") or {k.removesuffix("_s"): {"seconds": v, "status": "ran"}
                                   for k, v in res["timings"].items()}
    rows = [{"stage": k, "seconds": f"{s.get('seconds_when_ran', s['seconds']):.1f}",
             "minutes": f"{s.get('seconds_when_ran', s['seconds']) / 60:.1f}",
             "status": s["status"] + (" (time of the run that made it)" if "seconds_when_ran" in s else "")}
            for k, s in stages.items()]
    total = sum(s.get("seconds_when_ran", s["seconds"]) for s in stages.values())
    rows.append({"stage": "total", "seconds": f"{total:.1f}", "minutes": f"{total / 60:.1f}", "status": ""})
    return [rows]


def _gallery_questions(data: Path, n: int, seed: int) -> list[dict]:
    """One closed-ended test question per question type (seeded pick), then more until ``n``; each with the
    clip's reference captions."""
    recs = json.loads((data / "instructions" / "test.json").read_text())
    caps: dict[str, list[str]] = {}
    for r in recs:
        if r.get("qtype") == "caption":
            caps.setdefault(r["audio_id"], []).append(r["output"])
    closed = [r for r in recs if not r.get("open_ended") and r.get("qtype") != "caption"]
    order = np.random.default_rng(seed).permutation(len(closed))
    picked, seen_clip, seen_q = [], set(), set()
    for strict in (True, False):
        for i in order:
            r = closed[i]
            if len(picked) >= n or r["audio_id"] in seen_clip or (strict and r["qtype"] in seen_q):
                continue
            picked.append(dict(r, captions=caps.get(r["audio_id"], [])))
            seen_clip.add(r["audio_id"])
            seen_q.add(r["qtype"])
    return sorted(picked, key=lambda r: r["qtype"])


def _gallery(run: Path, data: Path | None, clips: int, use_model: bool, seed: int,
             max_new_tokens: int) -> list:
    import torch

    from encoder.features import SAMPLE_RATE, load_audio
    from encoder.hf import resolve_encoder
    from encoder.pretraining import PretrainConfig
    from eval.gallery import clip_card, clip_spectrogram, masked_views, plot_clip_views
    from mosaic_core.config import parse_config, read_yaml

    if data is None or not (data / "instructions" / "test.json").is_file():
        return [_missing(f"the test questions (instructions/test.json under the data root {data}); "
                         "pass --data")]
    from .pipeline import final_artifact

    # the pretrained variant's last stage as its result names it (else the newest stage folder: a bare train-alm run)
    named = final_artifact(run / "alm_qa_pretrained.json")
    artifacts = [named] if named is not None and named.is_dir() else \
        sorted((run / "alm" / "pretrained").glob("stage*/artifact"))
    model = None
    if use_model and artifacts:
        from mosaic_alm.artifact import load_alm

        model = load_alm(artifacts[-1])
    enc_dir = run / "pretrain-audiomosaic" / "encoder"
    encoder = resolve_encoder(str(enc_dir)) if (enc_dir / "config.json").is_file() else \
        (model.encoder if model is not None and model.encoder is not None else None)
    if encoder is None:
        return [_missing("an encoder (pretrain-audiomosaic/encoder or an ALM artifact)")]
    cfg_path = run / "pretrain-audiomosaic" / "config.yaml"
    pretrain = parse_config(PretrainConfig, read_yaml(cfg_path), str(cfg_path)) if cfg_path.is_file() else None
    qs = _gallery_questions(data, clips, seed)
    paths = [str(data / q["audio_path"]) for q in qs]
    answers = captions = None
    if model is not None:
        from mosaic_alm.infer import ask, caption

        answers = ask(model, paths, [q["instruction"] for q in qs], max_new_tokens=max_new_tokens)
        captions = caption(model, paths, max_new_tokens=3 * max_new_tokens)
    m = (pretrain or PretrainConfig()).masking
    items = [f"{len(qs)} held-out clips, one question type each. Under each spectrogram: the two structured views "
             f"pretraining draws (view 1 {m.time_view} mask dropping {m.time_ratio:.0%}, view 2 {m.freq_view} mask "
             f"dropping {m.freq_ratio:.0%} of the patch grid; grey = dropped). "
             + (f"Answers and captions: {artifacts[-1].relative_to(run)} (greedy)." if model is not None else
                "No ALM artifact was run (" + ("none in alm/pretrained/" if not artifacts else "--no-model")
                + "): references only.")]
    for i, (q, path) in enumerate(zip(qs, paths)):
        wave = load_audio(path)[: int(GALLERY_SECONDS * SAMPLE_RATE)]
        with torch.no_grad():
            spec, n = clip_spectrogram(encoder, wave)
        views = masked_views(encoder, spec.shape[0], pretrain, step=i + 1)
        fig = plot_clip_views(spec, views, encoder.config.patch_size, n)
        rows = {"question": q["instruction"], "reference answer": q["output"]}
        if answers is not None:
            rows["model answer"] = answers[i]
            rows["model caption"] = captions[i]
        rows["reference caption"] = " | ".join(q["captions"][:2]) or "—"
        items.append(clip_card(f"{q['qtype'].replace('_', ' ')}: {q['audio_id']}", wave, SAMPLE_RATE, fig, rows))
    return items


def build_report(run: str | Path, data: str | Path | None = None, clips: int = 8, use_model: bool = True,
                 seed: int = 0, max_new_tokens: int = 16) -> Path:
    """Write ``{run}/report.html`` from what the run folder holds; return its path."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    pipe = _json(run / "pipeline.json") or {}
    if data is None:
        data = pipe.get("data_root") or (pipe.get("args") or {}).get("data_root")
        if data is None and pipe.get("args"):
            data = REPO / "data" / f"embedded-{pipe['args'].get('profile', 'full')}"
    sections = [("Pretraining loss curves", _pretraining(run)), *_probes(run),
                ("Audio-language model: accuracy per question type", _alm(run)),
                ("Captioning and classification by generation", _captions(run)),
                ("Wall time per stage", _timings(run)),
                ("Gallery of test clips", _gallery(run, Path(data) if data else None, clips, use_model, seed,
                                                   max_new_tokens))]
    _, page = write_report(run, f"mosaic-alm run report: {run.resolve().name}", sections, name="report",
                           markdown=False)
    return page


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mosaic-alm report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a pipeline run folder (mosaic-alm pipeline --out)")
    p.add_argument("--data", default=None, help="data root of the gallery's test clips (default: the run's)")
    p.add_argument("--clips", type=int, default=8, help="clips in the gallery")
    p.add_argument("--no-model", action="store_true", help="do not run the ALM artifact for the gallery")
    p.add_argument("--max-new-tokens", type=int, default=16, help="answer length (captions get 3x)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    page = build_report(args.run_dir, args.data, args.clips, not args.no_model, args.seed, args.max_new_tokens)
    print(f"wrote {page} ({page.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
