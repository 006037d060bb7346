"""Evaluate an audio-language-model artifact on the embedded data, one command:

    mosaic-alm eval-alm runs/alm/stage4/artifact --data data/embedded-small [--out runs/eval-alm]

1. closed-ended QA on the held-out questions: normalised exact match of the greedy answer, option match and the
   option with the highest log-likelihood, overall and per question type;
2. captioning: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (SPICE/SPIDEr when its model files exist, else reported as
   missing) of generated captions against every reference caption of the clip, next to two baselines scored by
   the same harness on the same clips: the no-audio variant's captions (``no_audio_artifact``) and retrieval (the
   caption of the nearest training clip by the frozen encoder's standardised pooled feature, ``retrieval_encoder``);
   ``caption_table`` lists every clip's caption beside its references and the baselines';
3. classification by generation (LTU protocol): caption each test clip, embed caption and label names with the local
   sentence embedder, take the most similar label; accuracy per task, the embedder named in the results.
Writes ``alm_eval.json`` (config, seed, versions, numbers) and a Markdown/HTML report.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def _label_text(name: str) -> str:
    return name.replace("_", " ")


@torch.no_grad()
def retrieval_captions(encoder_spec: str, data: str, paths: list[str], target_frames: int,
                       batch_size: int = 32) -> list[str]:
    """The retrieval baseline: for each clip, the caption of the training clip whose frozen-encoder pooled feature
    is nearest (cosine after per-feature standardisation with the training clips' statistics: the raw pooled
    features of a small encoder share one dominant direction). A clip's first caption (sorted by record id)."""
    from encoder.features import file_to_input
    from encoder.hf import resolve_encoder
    from mosaic_alm.data import load_records

    enc = resolve_encoder(encoder_spec).eval()
    fb = enc.config.fbank_config(target_frames)
    train: dict[str, tuple[str, str]] = {}
    for r in sorted(load_records(data, "train", qtypes=["caption"]), key=lambda r: r["id"]):
        train.setdefault(r["audio_id"], (r["audio_path"], r["output"]))
    ids = sorted(train)

    def feats(files):
        out = []
        for i in range(0, len(files), batch_size):
            x = torch.stack([file_to_input(f, fb) for f in files[i:i + batch_size]])
            out.append(enc(x).pooler_output.float())
        return torch.cat(out)

    ref = feats([train[i][0] for i in ids])
    mean, std = ref.mean(0), ref.std(0).clamp_min(1e-6)
    unit = lambda z: torch.nn.functional.normalize((z - mean) / std, dim=1)  # noqa: E731
    nearest = (unit(feats(list(paths))) @ unit(ref).T).argmax(1)
    return [train[ids[int(j)]][1] for j in nearest]


def evaluate_alm(artifact: str, data: str, out: str, max_closed: int = 200, max_captions: int = 60,
                 max_classify: int = 40, seed: int = 0, batch_size: int = 8, no_audio_artifact: str | None = None,
                 retrieval_encoder: str | None = None) -> dict:
    from encoder.data.manifest import load_classes, read_manifest
    from mosaic_alm.artifact import load_alm
    from mosaic_alm.data import load_records
    from mosaic_alm.generation import caption

    from .alm_qa import evaluate_closed, sample_per_qtype
    from .caption_metrics import caption_scores
    from .classify_by_generation import TextEmbedder, classify_by_generation
    from .results import write_report, write_results

    t0 = time.time()
    model = load_alm(artifact)
    audio_on = model.cfg.audio.enabled
    numbers: dict = {"artifact": str(artifact), "audio": audio_on}

    closed = sample_per_qtype(load_records(data, "test", kind="closed"), max_closed, seed)
    log.info(f"[eval-alm] closed-ended QA on {len(closed)} questions")
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
        log.info(f"[eval-alm] captioning {len(ids)} clips")
        preds = caption(model, [paths[i] if audio_on else None for i in ids], batch_size=batch_size)
        preds = preds if isinstance(preds, list) else [preds]
        gts = {i: refs[i] for i in ids}
        numbers["captioning"] = {k: v for k, v in caption_scores(dict(zip(ids, preds)), gts).items()
                                 if k != "per_item"}
        table = {i: {"id": i, "references": refs[i], "prediction": p} for i, p in zip(ids, preds)}
        baselines = {}
        if retrieval_encoder:
            log.info(f"[eval-alm] caption baseline: retrieval by {retrieval_encoder}")
            baselines["retrieval"] = retrieval_captions(retrieval_encoder, data, [paths[i] for i in ids],
                                                        model.cfg.audio.target_frames if audio_on else 256)
        if no_audio_artifact:
            log.info(f"[eval-alm] caption baseline: no audio ({no_audio_artifact})")
            silent = load_alm(no_audio_artifact)
            got = caption(silent, [None] * len(ids), batch_size=batch_size)
            baselines["no_audio"] = got if isinstance(got, list) else [got]
            del silent
        numbers["caption_baselines"] = {}
        for name, caps_ in baselines.items():
            numbers["caption_baselines"][name] = {k: v for k, v in caption_scores(dict(zip(ids, caps_)), gts).items()
                                                  if k != "per_item"}
            for i, c in zip(ids, caps_):
                table[i][name] = c
        numbers["caption_table"] = list(table.values())
        numbers["caption_examples"] = [{"id": r["id"], "prediction": r["prediction"], "references": r["references"][:2]}
                                       for r in numbers["caption_table"][:8]]

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
        log.info(f"[eval-alm] classify-by-generation: {task}, {len(rows)} clips")
        preds = caption(model, [r["path"] if audio_on else None for r in rows], batch_size=batch_size)
        preds = preds if isinstance(preds, list) else [preds]
        res = classify_by_generation(preds, [_label_text(c) for c in classes],
                                     np.array([classes.index(r["label"]) for r in rows]), embedder)
        numbers["classify_by_generation"][task] = {"accuracy": res["accuracy"], "clips": len(rows),
                                                   "chance": 1.0 / len(classes), "embedder": res["embedder"]}
    numbers["seconds"] = round(time.time() - t0, 1)
    cfg = {"artifact": str(artifact), "data": str(data), "max_closed": max_closed, "max_captions": max_captions,
           "max_classify": max_classify, "batch_size": batch_size, "no_audio_artifact": no_audio_artifact,
           "retrieval_encoder": retrieval_encoder}
    write_results(out, "alm_eval", numbers, cfg, seed)
    qa = numbers["closed_qa"]
    sections = [
        ("Closed-ended QA", [{q: {k: v[k] for k in ("exact_match", "option_match", "loglik_option", "count") if k in v}
                              for q, v in {**qa["per_qtype"], "overall": qa["overall"]}.items()}]),
        ("Classification by generation", [numbers["classify_by_generation"]]),
    ]
    if "captioning" in numbers:
        rows = {"this model": numbers["captioning"], **numbers.get("caption_baselines", {})}
        sections.insert(1, ("Captioning (this model and the baselines, same clips and harness)",
                            [{name: {k: v for k, v in sc.items() if isinstance(v, (int, float)) and
                                     not isinstance(v, bool)} for name, sc in rows.items()}]))
    write_report(out, f"ALM evaluation: {artifact}", sections, name="alm_eval")
    log.info(f"[eval-alm] closed QA exact {qa['overall']['exact_match']:.3f}, results in {out}/alm_eval.json")
    return numbers
