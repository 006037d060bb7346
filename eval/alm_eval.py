"""Evaluate an audio-language-model artifact on the embedded data, one command:

    mosaic-alm eval-alm runs/alm/stage4/artifact --data data/embedded-small [--out runs/eval-alm]

1. closed-ended QA on the held-out questions: normalised exact match of the greedy answer, option match and the
   option with the highest log-likelihood, overall and per question type;
2. captioning: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (SPICE/SPIDEr when its model files exist, else reported as
   missing) of generated captions against every reference caption of the clip;
3. classification by generation (LTU protocol): caption each test clip, embed caption and label names with the local
   sentence embedder, take the most similar label; accuracy per task, the embedder named in the results.
Writes ``alm_eval.json`` (config, seed, versions, numbers) and a Markdown/HTML report.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def _label_text(name: str) -> str:
    return name.replace("_", " ")


def evaluate_alm(artifact: str, data: str, out: str, max_closed: int = 200, max_captions: int = 60,
                 max_classify: int = 40, seed: int = 0, batch_size: int = 8) -> dict:
    from encoder.data.manifest import load_classes, read_manifest
    from mosaic_alm.artifact import load_alm
    from mosaic_alm.data import load_records
    from mosaic_alm.infer import caption

    from .alm_qa import evaluate_closed, sample_per_qtype
    from .caption_metrics import caption_scores
    from .classify_by_generation import TextEmbedder, classify_by_generation
    from .report import write_report, write_results

    t0 = time.time()
    model = load_alm(artifact)
    audio_on = model.cfg.audio.enabled
    numbers: dict = {"artifact": str(artifact), "audio": audio_on}

    closed = sample_per_qtype(load_records(data, "test", kind="closed"), max_closed, seed)
    print(f"[eval-alm] closed-ended QA on {len(closed)} questions", flush=True)
    numbers["closed_qa"] = evaluate_closed(model, closed, batch_size=batch_size)

    caps = load_records(data, "test", qtypes=["caption"])
    refs: dict[str, list[str]] = defaultdict(list)
    paths: dict[str, str] = {}
    for r in caps:
        refs[r["audio_id"]].append(r["output"])
        paths[r["audio_id"]] = r["audio_path"]
    ids = sorted(refs)
    if max_captions and len(ids) > max_captions:
        ids = [ids[i] for i in sorted(np.random.default_rng(seed).permutation(len(ids))[:max_captions])]
    if ids:
        print(f"[eval-alm] captioning {len(ids)} clips", flush=True)
        preds = caption(model, [paths[i] if audio_on else None for i in ids], batch_size=batch_size)
        preds = preds if isinstance(preds, list) else [preds]
        numbers["captioning"] = {k: v for k, v in caption_scores(dict(zip(ids, preds)), {i: refs[i] for i in ids})
                                 .items() if k != "per_item"}
        numbers["caption_examples"] = [{"id": i, "prediction": p, "references": refs[i][:2]}
                                       for i, p in list(zip(ids, preds))[:8]]

    embedder = TextEmbedder()
    numbers["classify_by_generation"] = {}
    for task in ("keywords", "instruments", "environment"):
        manifest = Path(data) / task / "manifest.jsonl"
        if not manifest.is_file():
            continue
        classes = load_classes(Path(data) / task / "classes.json")
        rows = [r for r in read_manifest(manifest, classes=classes) if r["split"] == "test"]
        if max_classify and len(rows) > max_classify:
            rows = [rows[i] for i in sorted(np.random.default_rng(seed).permutation(len(rows))[:max_classify])]
        print(f"[eval-alm] classify-by-generation: {task}, {len(rows)} clips", flush=True)
        preds = caption(model, [r["path"] if audio_on else None for r in rows], batch_size=batch_size)
        preds = preds if isinstance(preds, list) else [preds]
        res = classify_by_generation(preds, [_label_text(c) for c in classes],
                                     np.array([classes.index(r["label"]) for r in rows]), embedder)
        numbers["classify_by_generation"][task] = {"accuracy": res["accuracy"], "clips": len(rows),
                                                   "chance": 1.0 / len(classes), "embedder": res["embedder"]}
    numbers["seconds"] = round(time.time() - t0, 1)
    cfg = {"artifact": str(artifact), "data": str(data), "max_closed": max_closed, "max_captions": max_captions,
           "max_classify": max_classify, "batch_size": batch_size}
    write_results(out, "alm_eval", numbers, cfg, seed)
    qa = numbers["closed_qa"]
    sections = [
        ("Closed-ended QA", [{q: {k: v[k] for k in ("exact_match", "option_match", "loglik_option", "count") if k in v}
                              for q, v in {**qa["per_qtype"], "overall": qa["overall"]}.items()}]),
        ("Classification by generation", [numbers["classify_by_generation"]]),
    ]
    if "captioning" in numbers:
        sections.insert(1, ("Captioning", [{k: v for k, v in numbers["captioning"].items()
                                            if isinstance(v, (int, float)) or v is None}]))
    write_report(out, f"ALM evaluation: {artifact}", sections, name="alm_eval")
    print(f"[eval-alm] closed QA exact {qa['overall']['exact_match']:.3f}, results in {out}/alm_eval.json", flush=True)
    return numbers
