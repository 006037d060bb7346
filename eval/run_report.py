"""The run report: one self-contained HTML page of a pipeline run folder (the layout of
:mod:`mosaic_core.run_layout`: ``pretrain-audiomosaic/`` and ``pretrain-mae/`` with ``history.json``,
``eval-encoder/encoder_eval.json``, ``alm/`` + ``alm_qa.json``, ``eval-alm/alm_eval.json``, ``pipeline.json``; a results
folder holding those JSONs side by side is read too), written to ``RUN_DIR/report.html`` with no external assets:
figures are inlined PNGs, clips inlined WAVs. A section whose inputs are missing says so in one line. The page shows
only what the run recorded: its header names the commit, machine, precision and wall time as the run's files record
them (or says they were not recorded); a number measured once carries "1 seed", never a spread of zero; a stage that
ran alongside or within another shows its own time and is counted once in the total. The gallery takes one
held-out question per question type from the data's ``instructions/test.json`` and shows each clip's player,
spectrogram and the two masked views pretraining draws, the question, and, when the run holds an ALM artifact, the
model's answer and caption next to the references. The job is ``mosaic-alm report`` (recipes/report.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eval.probe_tables import accuracy_rows, few_label_section
from eval.results import (
    Html,
    plot_grouped_bars,
    plot_probe_by_layer,
    plot_training_curves,
    write_report,
)
from mosaic_core.run_layout import (
    ALONGSIDE,
    PRETRAIN_RUNS,
    RECORD_FILES,
    RunLayout,
    final_artifact,
)

REPO = Path(__file__).resolve().parents[1]
GALLERY_SECONDS = 10.0  # a clip's audio and views in the report are cut to this length


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _run_json(run: Path, rel: str) -> dict | None:
    """``run/rel``, or the file of that name directly in ``run`` (a committed results folder keeps them flat)."""
    path = run / rel
    return _json(path if path.is_file() else run / Path(rel).name)




def _settings(pipe: dict) -> dict:
    """The pipeline's settings as pipeline.json records them: the checked config (``config``), or the command-line
    ``args`` of run folders written before the pipeline read a YAML config."""
    return pipe.get("config") or pipe.get("args") or {}


def _records(run: Path) -> list[tuple[str, dict]]:
    return [(Path(rel).name, d) for rel in RECORD_FILES if isinstance(d := _run_json(run, rel), dict)]


def _blocks(doc: dict) -> list[dict]:
    """The provenance blocks a results file may carry: itself (pipeline.json), ``git``, ``versions`` (provenance())."""
    return [b for b in (doc, doc.get("git"), doc.get("versions")) if isinstance(b, dict)]


def _commit(records: list[tuple[str, dict]]) -> str:
    seen: dict[str, list[str]] = {}
    dirty = []
    for name, doc in records:
        block = next((b for b in _blocks(doc) if isinstance(b.get("commit"), str)), None)
        if block is not None:
            seen.setdefault(block["commit"], []).append(name)
            if block.get("dirty"):
                dirty.append(name)
    if not seen:
        return "not recorded in this run folder"
    text = "; ".join(f"{c} (recorded in {', '.join(files)})" for c, files in seen.items())
    return text + (f"; with uncommitted changes ({', '.join(dirty)})" if dirty else "")


def _machine(records: list[tuple[str, dict]]) -> str:
    arch = None
    for _, doc in records:
        for block in _blocks(doc):
            for m in (block.get("machine"), block.get("cpu")):
                if isinstance(m, dict) and m.get("cpu"):
                    cores, usable = m.get("cores"), m.get("usable_cores")
                    return (m["cpu"] + (f", {cores} cores" if cores else "")
                            + (f" ({usable} usable by the run)" if usable and usable != cores else "")
                            + (f", {m['arch']}" if m.get("arch") else ""))
                if isinstance(m, str) and arch is None:
                    arch = m
    return f"{arch}; CPU model and cores not recorded in this run folder" if arch else \
        "not recorded in this run folder"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def _header(run: Path, pipe: dict) -> list:
    """The run's provenance as its files record it: commit, machine, precision, wall time, preset."""
    records = _records(run)
    _, counted = _stage_rows(pipe)
    if isinstance(pipe.get("total_seconds"), (int, float)):
        wall = _minutes(pipe["total_seconds"])
        if pipe.get("skipped") and isinstance(pipe.get("total_seconds_when_ran"), (int, float)):
            wall += (f" for the last invocation, which skipped {', '.join(pipe['skipped'])}; "
                     f"{_minutes(pipe['total_seconds_when_ran'])} with the times of the runs that made them")
        if pipe.get("finished") is False:
            wall += f"; unfinished (pipeline.json last written {pipe.get('updated', 'at an unrecorded time')})"
    elif counted is not None:
        wall = f"{_minutes(counted)}, the sum of the stage times (pipeline.json records no total)"
    else:
        wall = "not recorded in this run folder"
    args = _settings(pipe)
    table = {"commit": _commit(records), "machine": _machine(records),
             "precision": pipe.get("precision") or "not recorded (pipeline.json has no precision field)",
             "wall time": wall, "started": pipe.get("started"), "preset": args.get("preset"),
             "seed": args.get("seed")}
    budget = pipe.get("budget")
    if isinstance(budget, dict) and budget.get("note"):
        table["budget"] = (f"{budget['note']} (expected {pipe.get('expected', {}).get('minutes', '?')} min, "
                           f"measured above)")
    return [table]


def _missing(what: str) -> Html:
    return Html(f'<p class="note">Not in this run: {what}.</p>', f"_Not in this run: {what}._")


def _pretraining(run: Path) -> list:
    hist = {}
    for name, label in zip(PRETRAIN_RUNS, ("contrastive", "MAE")):
        rows = _json(RunLayout(run).pretrain(name) / "history.json") or []
        for key in ("loss", "accuracy"):
            vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            if vals:
                hist[f"{label} {key}"] = vals
    if not hist:
        return [_missing("pretrain-audiomosaic/history.json, pretrain-mae/history.json")]
    return [f"Logged training steps: {', '.join(f'{k} {len(v)}' for k, v in hist.items() if 'loss' in k)}."
            + _same_setup(run) + _pretraining_data(run),
            plot_training_curves(hist, x_label="logged step", title="Pretraining")]


def _pretraining_data(run: Path) -> str:
    """What the contrastive pretraining read (its config.yaml): the unlabeled corpus as its corpus.json describes
    it, or the labelled tasks' manifests."""
    from mosaic_core.config import read_yaml

    path = RunLayout(run).pretrain(PRETRAIN_RUNS[0]) / "config.yaml"
    if not path.is_file():
        return ""
    data = read_yaml(path).get("data") or {}
    if not data.get("shards"):
        return (f" Pretraining read the labelled tasks' {', '.join(data.get('splits') or [])} splits "
                f"({', '.join(data.get('manifests') or [])}), without their labels.")
    info = _json(Path(data["shards"]) / "corpus.json")
    if info is None:
        return f" Pretraining read the WebDataset shards {data['shards']}."
    kinds = ", ".join(f"{k} {n:,}" for k, n in info.get("kinds", {}).items())
    return (f" Pretraining read the unlabeled corpus {data['shards']}: {info['clips']:,} clips ({kinds}), "
            f"{info.get('hours')} hours, built in {info.get('seconds', {}).get('total')} s from train voices, "
            "soundfonts, programs and recordings only.")


def _same_setup(run: Path) -> str:
    """Whether the two pretrainings' configs (config.yaml) share data, steps and batch: said only when both hold."""
    from mosaic_core.config import read_yaml

    paths = [RunLayout(run).pretrain(name) / "config.yaml" for name in PRETRAIN_RUNS]
    if not all(p.is_file() for p in paths):
        return ""
    a, b = (read_yaml(p) for p in paths)
    keys = {"data": lambda c: c.get("data"), "steps": lambda c: (c.get("train") or {}).get("max_steps"),
            "batch": lambda c: (c.get("train") or {}).get("batch_size")}
    differ = [k for k, get in keys.items() if get(a) != get(b)]
    return (" Both ran on the same data, steps and batch (their config.yaml)." if not differ else
            f" The two runs differ in {', '.join(differ)} (their config.yaml).")


def _probes(run: Path) -> list[tuple[str, list]]:
    res = _run_json(run, "eval-encoder/encoder_eval.json")
    if res is None:
        return [("Encoder probes", [_missing("eval-encoder/encoder_eval.json")])]
    tasks = res["numbers"]["tasks"]
    out = [("Encoder probes against MFCC and a random encoder",
            [("Held-out accuracy (mfcc_logreg: logistic regression on MFCC statistics; random: the same "
              "architecture, untrained). The linear read-out and the MFCC baseline are one convex fit each; the "
              "other probes ran once per probe seed: mean ± std (n=seeds) where more than one ran, \"1 seed\" "
              "where one did."), accuracy_rows(tasks)])]
    if res["numbers"].get("few_label"):
        out.append(few_label_section(res["numbers"]["few_label"]))
    layers = []
    for task, by_enc in tasks.items():
        curves = {e: v["linear_by_layer_test"] for e, v in by_enc.items() if v.get("linear_by_layer_test")}
        mfcc = by_enc.get("mfcc_logreg", {}).get("test", {}).get("accuracy", {}).get("mean")
        if curves:
            layers.append(plot_probe_by_layer(curves, baselines={"MFCC + LR": mfcc} if mfcc is not None else None,
                                              title=f"{task}: linear probe by layer (test)"))
    out.append(("Probe accuracy by layer", layers or [_missing("a layer sweep in encoder_eval.json")]))
    confusions = sorted(RunLayout(run).eval_encoder.glob("encoder_eval_*confusion_matrix*.png"))  # as evaluated
    out.append(("Confusion matrices", confusions or [_missing("confusion matrices in eval-encoder/")]))
    return out


def _wilson(p: float, n: int) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(round(p * n), n).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _alm(run: Path) -> list:
    res = _json(RunLayout(run).alm_qa)
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
    n_questions = res.get("test_questions") or table["overall"]["n"]
    seed = f"one training seed (seed {res['seed']})" if res.get("seed") is not None else "one training run"
    items = [(f"Closed-ended accuracy (normalised exact match) per question type on {n_questions} held-out "
              f"questions, {seed}: the 95 % Wilson intervals are over the test questions, not over training "
              "seeds."),
             plot_grouped_bars(values, intervals, title="ALM: pretrained vs random encoder vs no audio"), table]
    items += _alm_budget(res)
    comps = [{"comparison": name.replace("_", " "), "metric": k, "difference": f"{c['difference']:+.3f}",
              "95% CI (paired bootstrap)": f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]",
              **({"McNemar p": f"{c['mcnemar_p']:.2g}"} if c.get("mcnemar_p") is not None else {})}
             for name, by in res.get("comparisons", {}).items() for k, c in by.items()
             if c.get("difference") is not None and c.get("ci95")]
    return items + ([comps] if comps else [])


def _alm_budget(res: dict) -> list:
    """What each variant trained, read from its stages' results (steps, examples, seconds); the configured budget
    per stage only when no stage recorded its own."""
    rows = []
    for v, r in res["variants"].items():
        for st in r.get("stages") or []:
            secs = {k: f"{st[key]:.1f}" for k, key in (("train seconds", "train_seconds"),
                                                         ("wall seconds", "wall_seconds"))
                    if isinstance(st.get(key), (int, float))}
            row = {"variant": v, "stage": st.get("stage"), "steps": st.get("steps"), "examples": st.get("examples"),
                   **secs}
            if st.get("reused"):
                row["note"] = "reused from an earlier run"
            rows.append({k: x for k, x in row.items() if x is not None})
    if rows:
        return ["What each variant trained (from its stages' results):", rows]
    budget = [(what, res.get(key)) for what, key in (("steps", "steps_per_stage"), ("examples", "examples_per_stage"))
              if res.get(key) is not None]
    return [f"Budget per stage as configured: {what} {', '.join(map(str, b)) if isinstance(b, list) else b}."
            for what, b in budget]


def _captions(run: Path) -> list:
    res = _run_json(run, "eval-alm/alm_eval.json")
    if res is None:
        return [_missing("eval-alm/alm_eval.json (the ALM evaluation)")]
    n = res["numbers"]
    items = [f"Artifact {n['artifact']}."] if n.get("artifact") else []
    def numeric(scores: dict) -> dict:
        return {k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}

    if "captioning" in n:  # a metric that was not computed is left out of the table and named below it
        base = n.get("caption_baselines") or {}
        if base:  # the model and its baselines, scored by the same harness on the same clips
            items.append("This model's captions and the baselines' (retrieval: the caption of the nearest training "
                         "clip by the frozen encoder's pooled feature; no audio: the text-only variant), same clips:")
            items.append({"this model": numeric(n["captioning"]), **{k: numeric(v) for k, v in base.items()}})
        else:
            items.append(numeric(n["captioning"]))
        items += [f"{k} not computed: {why}." for k, why in n["captioning"].get("missing", {}).items()]
    else:
        items.append(_missing("caption metrics"))
    if n.get("caption_table"):
        cols = [c for c in ("retrieval", "no_audio") if any(c in r for r in n["caption_table"])]
        items.append([{"clip": r["id"], "caption": r["prediction"], "reference": " | ".join(r["references"][:2]),
                       **{f"{c.replace('_', ' ')} caption": r.get(c, "") for c in cols}} for r in n["caption_table"]])
    elif n.get("caption_examples"):
        items.append([{"clip": e["id"], "caption": e["prediction"], "reference": " | ".join(e["references"])}
                      for e in n["caption_examples"]])
    if n.get("classify_by_generation"):
        items += ["Classification by generation (caption, then the nearest label by sentence embedding):",
                  {t: {k: v for k, v in d.items() if k != "embedder"} for t, d in n["classify_by_generation"].items()}]
    return items


def _stage_rows(pipe: dict) -> tuple[list[dict], float | None]:
    """One row per stage with its own time, and the wall time with every stage counted once: a stage ``within``
    another is part of that one's time; a stage that trained ``seconds_alongside`` another (its own process)
    adds only the time the pipeline then waited for it (its ``seconds``)."""
    stages = pipe.get("stages") or {k.removesuffix("_s"): {"seconds": v, "status": "ran"}
                                    for k, v in (pipe.get("timings") or {}).items()}
    rows, total = [], None
    for name, s in stages.items():
        wall = s.get("seconds_when_ran", s.get("seconds"))
        if not isinstance(wall, (int, float)):
            continue
        note = s.get("status", "ran") + (" (time of the run that made it)" if "seconds_when_ran" in s else "")
        own, counted = wall, wall
        if s.get("within"):
            counted = None
            note += f"; within {s['within']}: part of its time, not added again"
        elif "seconds_alongside" in s:
            beside = s.get("alongside") or ALONGSIDE.get(name, "the stage before it")
            if isinstance(s["seconds_alongside"], (int, float)):
                own = s["seconds_alongside"]
                note += (f"; alongside {beside} in its own process: the total adds only the {wall:.1f} s the "
                         "pipeline waited for it after that")
            else:
                own = None
                note += f"; alongside {beside} (its own time was not recorded; {wall:.1f} s waited for it after)"
        row = {"stage": name}
        if own is not None:
            row.update({"seconds": f"{own:.1f}", "minutes": f"{own / 60:.1f}"})
        row.update({"in the total (s)": f"{counted:.1f}" if counted is not None else f"in {s['within']}",
                    "note": note})
        rows.append(row)
        if counted is not None:
            total = (total or 0.0) + counted
    return rows, total


def _timings(run: Path) -> list:
    res = _json(RunLayout(run).pipeline_json)
    if res is None or not (res.get("timings") or res.get("stages")):
        return [_missing("pipeline.json")]
    rows, total = _stage_rows(res)
    if total is not None:
        rows.append({"stage": "total", "seconds": f"{total:.1f}", "minutes": f"{total / 60:.1f}",
                     "in the total (s)": f"{total:.1f}", "note": "every stage counted once"})
    items: list = [rows]
    side = res.get("alm_variant_seconds")
    if isinstance(side, dict) and side:
        items.append("The ALM variants trained side by side, each in its own process (their times overlap and are "
                     "part of alm's): " + ", ".join(f"{v} {t:.1f} s" for v, t in side.items()
                                                     if isinstance(t, (int, float))) + ".")
    if isinstance(res.get("total_seconds"), (int, float)) and total is not None:
        items.append(f"The pipeline's own wall clock: {res['total_seconds']:.1f} s (the stages plus what ran "
                     "between them).")
    return items


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
    # the pretrained variant's last stage as its result names it (else the newest stage folder: a bare train-alm run)
    named = final_artifact(RunLayout(run).alm_qa_variant("pretrained"))
    artifacts = [named] if named is not None and named.is_dir() else \
        sorted((RunLayout(run).alm / "pretrained").glob("stage*/artifact"))
    model = None
    if use_model and artifacts:
        from mosaic_alm.artifact import load_alm

        model = load_alm(artifacts[-1])
    enc_dir = RunLayout(run).encoder("audiomosaic")
    encoder = resolve_encoder(str(enc_dir)) if (enc_dir / "config.json").is_file() else \
        (model.encoder if model is not None and model.encoder is not None else None)
    if encoder is None:
        return [_missing("an encoder (pretrain-audiomosaic/encoder or an ALM artifact)")]
    cfg_path = RunLayout(run).pretrain("audiomosaic") / "config.yaml"
    pretrain = parse_config(PretrainConfig, read_yaml(cfg_path), str(cfg_path)) if cfg_path.is_file() else None
    qs = _gallery_questions(data, clips, seed)
    paths = [str(data / q["audio_path"]) for q in qs]
    answers = captions = None
    if model is not None:
        from mosaic_alm.generation import ask, caption

        answers = ask(model, paths, [q["instruction"] for q in qs], max_new_tokens=max_new_tokens)
        captions = caption(model, paths, max_new_tokens=3 * max_new_tokens)
    m = (pretrain or PretrainConfig()).masking
    items = [f"{len(qs)} held-out clips, one question type each. Under each spectrogram: the two structured views "
             f"pretraining draws (view 1 {m.time_view} mask dropping {m.time_ratio:.0%}, view 2 {m.freq_view} mask "
             f"dropping {m.freq_ratio:.0%} of the patch grid; grey = dropped"
             + ("" if pretrain is not None else "; the kit's default masking: the run holds no "
                "pretrain-audiomosaic/config.yaml") + "). "
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
        if q["captions"]:
            rows["reference caption"] = " | ".join(q["captions"][:2])
        items.append(clip_card(f"{q['qtype'].replace('_', ' ')}: {q['audio_id']}", wave, SAMPLE_RATE, fig, rows))
    return items


def build_report(run: str | Path, data: str | Path | None = None, clips: int = 8, use_model: bool = True,
                 seed: int = 0, max_new_tokens: int = 16) -> Path:
    """Write ``{run}/report.html`` from what the run folder holds; return its path."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    pipe = _json(RunLayout(run).pipeline_json) or {}
    if data is None:
        data = pipe.get("data_root") or _settings(pipe).get("data_root")
        if data is None and _settings(pipe):
            data = REPO / "data" / f"embedded-{_settings(pipe).get('profile', 'full')}"
    sections = [("Run", _header(run, pipe)), ("Pretraining loss curves", _pretraining(run)), *_probes(run),
                ("Audio-language model: accuracy per question type", _alm(run)),
                ("Captioning and classification by generation", _captions(run)),
                ("Wall time per stage", _timings(run)),
                ("Gallery of test clips", _gallery(run, Path(data) if data else None, clips, use_model, seed,
                                                   max_new_tokens))]
    _, page = write_report(run, f"mosaic-alm run report: {run.resolve().name}", sections, name="report",
                           markdown=False)
    return page
