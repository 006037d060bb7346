"""Instruction data for the audio-language model, generated from the embedded benchmark's manifests.

Writes ``{root}/instructions/{train,valid,test}.json``: lists of LTU/OpenAQA-style records
``{"id", "audio_id", "audio_path", "instruction", "input", "output", "task", "qtype", "open_ended", "options"}``
where ``audio_id`` is the clip's manifest id and ``audio_path`` is relative to ``root``. Closed-ended questions list
their options in the instruction and the output is exactly one option. Every answer comes from the clip's metadata.

Also mixes keywords over environmental backgrounds (same split on both sides, random SNR) into
``{root}/mixtures/clips`` with ``{root}/mixtures/manifest.jsonl`` and compositional captions. The ``test_xengine``
keyword split goes to ``test``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf

from encoder.data.embedded import (
    ENV_CLASSES,
    GM_FAMILIES,
    KEYWORDS,
    SR,
    item_rng,
    loudness_db,
)
from encoder.data.manifest import read_manifest, write_manifest
from mosaic_core.io import atomic_write_text

OUT_SPLITS = ("train", "valid", "test")
SPLIT_OF = {"train": "train", "valid": "valid", "test": "test", "test_xengine": "test"}
LOW_NOTE_MAX, HIGH_NOTE_MIN = 52, 72
MIX_SNR_DB = (0.0, 15.0)
MIX_PER_SPLIT = {"train": 400, "valid": 100, "test": 100}

ENV_PHRASES = {
    "birds": "birds singing in a daytime landscape", "wind": "wind blowing", "storm": "a storm",
    "water": "flowing water", "fire": "a crackling fire", "crowd": "a crowd at a market", "footsteps": "footsteps",
    "horse": "a horse", "farm animals": "farm animals", "wood chopping": "wood being chopped",
    "pick": "a pick striking rock", "sword": "swords clashing", "arrow impact": "an arrow hitting a target",
    "scream": "a person screaming", "rustle": "leaves rustling", "sawing": "wood being sawn",
}
QUESTIONS = {
    "keyword_word": ["Which word is spoken?", "What word does the speaker say?", "Identify the spoken word."],
    "speaker_gender": ["Is the voice male or female?", "Is this a male or a female voice?"],
    "instrument_family": ["Which instrument family is playing?", "What family of instrument produces this note?"],
    "pitch_high_low": ["Is the note high or low in pitch?", "Is this a high or a low note?"],
    "loudness_loud_soft": ["Is the note played loud or soft?", "Is this note played loudly or softly?"],
    "sound_event": ["Which sound event is heard?", "What is the main sound in this recording?"],
    "mixture_word": ["A word is spoken over background noise. Which word is it?"],
    "mixture_background": ["What is the background sound behind the speech?"],
    "open": ["Describe what you hear.", "What is happening in this audio?", "What can you hear in this clip?"],
    "caption": ["Write a short caption for this audio.", "Caption the audio in one sentence."],
}


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def keyword_caption(r: dict[str, Any]) -> str:
    return f"A {r['gender']} voice with {_article(r['accent'])} {r['accent']} accent says '{r['word']}'."


def instrument_caption(r: dict[str, Any]) -> str:
    how = "softly" if r["dynamics"] == "soft" else "loudly"
    name = r["program_name"]
    return f"{_article(name).capitalize()} {name} ({r['family']} family) plays the note {r['note_name']} {how}."


def environment_caption(r: dict[str, Any]) -> str:
    cls = r["label"]
    if cls == "footsteps":
        gait = {"running": "Running f", "walking": "Walking f"}.get(r.get("gait", ""), "F")
        return f"{gait}ootsteps on {r['surface']}." if r.get("surface", "unknown") != "unknown" else f"{gait}ootsteps."
    if cls == "arrow impact" and r.get("material", "unspecified") != "unspecified":
        return f"An arrow hits {r['material']}."
    if cls == "pick" and r.get("material") in ("metal", "stone"):
        return f"A pick strikes {'metal ore' if r['material'] == 'metal' else 'stone'}."
    if cls == "farm animals":
        plural = {"chicken": "chickens", "pig": "pigs", "goat": "goats"}.get(r["species"], r["species"])
        return f"The sound of {plural}."
    if cls == "scream":
        return f"A {'woman' if r['gender'] == 'female' else 'man'} screams."
    text = ENV_PHRASES[cls]
    return text[0].upper() + text[1:] + "."


def _closed(rng: np.random.Generator, qtype: str, options: Sequence[str], answer: str) -> dict[str, Any]:
    assert answer in options, (answer, options)
    q = QUESTIONS[qtype][int(rng.integers(len(QUESTIONS[qtype])))]
    return {"instruction": f"{q} Answer with one of: {', '.join(options)}.", "output": answer, "qtype": qtype,
            "open_ended": False, "options": list(options)}


def _open(rng: np.random.Generator, qtype: str, answer: str) -> dict[str, Any]:
    q = QUESTIONS[qtype][int(rng.integers(len(QUESTIONS[qtype])))]
    return {"instruction": q, "output": answer, "qtype": qtype, "open_ended": True}


def questions_for(r: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """All questions about one manifest row (answers derived from its metadata only)."""
    rng = item_rng(seed, "questions", r["task"], r["id"])
    task, out = r["task"], []
    if task == "keywords":
        cap = keyword_caption(r)
        out += [_closed(rng, "keyword_word", KEYWORDS, r["word"]),
                _closed(rng, "speaker_gender", ("male", "female"), r["gender"]),
                _open(rng, "open", f"Someone speaks the word '{r['word']}' in a {r['gender']} voice."),
                _open(rng, "caption", cap)]
    elif task == "instruments":
        out += [_closed(rng, "instrument_family", GM_FAMILIES, r["family"]),
                _closed(rng, "loudness_loud_soft", ("loud", "soft"), r["dynamics"])]
        if r["note"] <= LOW_NOTE_MAX or r["note"] >= HIGH_NOTE_MIN:
            out.append(_closed(rng, "pitch_high_low", ("high", "low"), "high" if r["note"] >= HIGH_NOTE_MIN else "low"))
        out += [_open(rng, "open", f"A single {r['family']} note: {_article(r['program_name'])} {r['program_name']} "
                                   f"playing {r['note_name']} ({r['pitch_hz']:.0f} Hz)."),
                _open(rng, "caption", instrument_caption(r))]
    elif task == "environment":
        cap = environment_caption(r)
        out += [_closed(rng, "sound_event", ENV_CLASSES, r["label"]), _open(rng, "open", cap),
                _open(rng, "caption", cap)]
        if r["label"] == "scream":
            out.append(_closed(rng, "speaker_gender", ("male", "female"), r["gender"]))
    elif task == "mixtures":
        cap = r["caption"]
        out += [_closed(rng, "mixture_word", KEYWORDS, r["word"]),
                _closed(rng, "mixture_background", ENV_CLASSES, r["background_class"]),
                _open(rng, "open", cap), _open(rng, "caption", cap)]
    return out


def make_mixtures(root: Path, keywords: list[dict[str, Any]], env: list[dict[str, Any]], seed: int,
                  per_split: dict[str, int] = MIX_PER_SPLIT) -> list[dict[str, Any]]:
    """Keyword over an environmental background of the same split at a random SNR; writes clips and manifest."""
    out_dir = root / "mixtures"
    rows = []
    for split in OUT_SPLITS:
        kws = [k for k in keywords if k["split"] == split]  # test_xengine voices stay out of mixtures
        bgs = [e for e in env if e["split"] == split]
        if not kws or not bgs:
            continue
        order = item_rng(seed, "mix_order", split).permutation(len(kws))[: per_split.get(split, 0)]
        for i, ki in enumerate(order):
            k = kws[int(ki)]
            rng = item_rng(seed, "mix", split, i)
            b = bgs[int(rng.integers(len(bgs)))]
            word, _ = sf.read(k["path"], dtype="float32")
            bg, _ = sf.read(b["path"], dtype="float32")
            snr = float(rng.uniform(*MIX_SNR_DB))
            offset = int(rng.integers(0, max(1, bg.size - word.size)))
            p_word = float(np.mean(word ** 2)) + 1e-10
            p_bg = float(np.mean(bg ** 2)) + 1e-10
            gain = np.sqrt(p_bg / p_word * 10 ** (snr / 10))
            mix = bg.copy()
            mix[offset: offset + word.size] += gain * word[: bg.size - offset]
            mix *= 0.9 / max(float(np.abs(mix).max()), 0.9)
            rid = f"mix_{split}_{i:05d}"
            rel = f"clips/{rid}.wav"
            (out_dir / "clips").mkdir(parents=True, exist_ok=True)
            sf.write(str(out_dir / rel), mix, SR, subtype="PCM_16")
            bg_cap = environment_caption(b).rstrip(".")
            cap = f"{keyword_caption(k).rstrip('.')} over {bg_cap[0].lower() + bg_cap[1:]} in the background."
            rows.append({"id": rid, "path": rel, "label": k["word"], "split": split, "task": "mixtures",
                         "word": k["word"], "gender": k["gender"], "accent": k["accent"], "keyword_id": k["id"],
                         "background_id": b["id"], "background_class": b["label"], "snr_db": round(snr, 2),
                         "offset": round(offset / SR, 4), "duration": round(mix.size / SR, 4),
                         "loudness": loudness_db(mix), "caption": cap})
    write_manifest(rows, out_dir / "manifest.jsonl")
    (out_dir / "classes.json").write_text(json.dumps(list(KEYWORDS), indent=1) + "\n")
    return read_manifest(out_dir / "manifest.jsonl")


def generate(root: str | os.PathLike, seed: int = 0, mixtures: bool = True) -> dict[str, Any]:
    """Write instruction files for every task found under ``root``; returns counts per split and qtype."""
    root = Path(root)
    manifests = {t: read_manifest(root / t / "manifest.jsonl")
                 for t in ("keywords", "instruments", "environment") if (root / t / "manifest.jsonl").exists()}
    if not manifests:
        raise FileNotFoundError(f"{root}: no task manifests found; build the embedded data first")
    if mixtures and "keywords" in manifests and "environment" in manifests:
        manifests["mixtures"] = make_mixtures(root, manifests["keywords"], manifests["environment"], seed)
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in OUT_SPLITS}
    for task, rows in manifests.items():
        for r in rows:
            split = SPLIT_OF[r["split"]]
            audio_path = Path(r["path"]).relative_to(root.resolve()).as_posix()
            for j, q in enumerate(questions_for(r, seed)):
                records[split].append({"id": f"{r['id']}_{q['qtype']}_{j}", "audio_id": r["id"],
                                       "audio_path": audio_path, "instruction": q.pop("instruction"), "input": "",
                                       "output": q.pop("output"), "task": task, "source_split": r["split"], **q})
    out = root / "instructions"
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    for split, recs in records.items():
        atomic_write_text(out / f"{split}.json", json.dumps(recs, ensure_ascii=False, indent=0))
        counts: dict[str, int] = {}
        for rec in recs:
            counts[rec["qtype"]] = counts.get(rec["qtype"], 0) + 1
        summary[split] = {"records": len(recs), "qtypes": dict(sorted(counts.items()))}
    return summary
