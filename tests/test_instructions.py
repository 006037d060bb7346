"""Instruction data: closed answers are options backed by metadata; mixtures keep splits; deterministic."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from encoder.data.embedded import ENV_CLASSES, GM_FAMILIES, KEYWORDS
from encoder.data.manifest import read_manifest
from mosaic_alm.instructions import generate

pytestmark = pytest.mark.data
CLOSED = {"keyword_word", "speaker_gender", "instrument_family", "pitch_high_low", "loudness_loud_soft",
          "sound_event", "mixture_word", "mixture_background"}


@pytest.fixture(scope="module")
def generated(embedded_root):
    summary = generate(embedded_root, seed=0)
    recs = {s: json.loads((embedded_root / "instructions" / f"{s}.json").read_text()) for s in summary}
    return embedded_root, summary, recs


def _rows(root):
    rows = {}
    for task in ("keywords", "instruments", "environment", "mixtures"):
        for r in read_manifest(root / task / "manifest.jsonl"):
            rows[r["id"]] = r
    return rows


def test_records_backed_by_metadata(generated):
    root, summary, recs = generated
    rows = _rows(root)
    qtypes = set()
    for split, rs in recs.items():
        assert rs and summary[split]["records"] == len(rs)
        assert len({r["id"] for r in rs}) == len(rs)
        for rec in rs:
            row = rows[rec["audio_id"]]
            qtypes.add(rec["qtype"])
            assert (root / rec["audio_path"]).is_file() and rec["input"] == ""
            assert {"train": "train", "valid": "valid", "test": "test", "test_xengine": "test"}[row["split"]] == split
            if rec["open_ended"]:
                assert rec["qtype"] in ("open", "caption") and rec["output"] and "options" not in rec
                continue
            assert rec["qtype"] in CLOSED and rec["output"] in rec["options"]
            assert ", ".join(rec["options"]) in rec["instruction"]
            if rec["qtype"] == "pitch_high_low":
                want = "high" if row["note"] >= 72 else "low"
            else:
                want = row[{"keyword_word": "word", "mixture_word": "word", "speaker_gender": "gender",
                            "instrument_family": "family", "loudness_loud_soft": "dynamics", "sound_event": "label",
                            "mixture_background": "background_class"}[rec["qtype"]]]
            assert rec["output"] == want
            if rec["qtype"] == "keyword_word":
                assert rec["options"] == KEYWORDS
            if rec["qtype"] == "instrument_family":
                assert rec["options"] == list(GM_FAMILIES)
            if rec["qtype"] == "sound_event":
                assert rec["options"] == list(ENV_CLASSES)
    assert qtypes == CLOSED | {"open", "caption"}


def test_captions(generated):
    root, _, recs = generated
    rows = _rows(root)
    caps = [r for r in recs["test"] if r["qtype"] == "caption"]
    for rec in caps:
        row = rows[rec["audio_id"]]
        if row["task"] == "keywords":
            assert rec["output"] == f"A {row['gender']} voice with {'an' if row['accent'][0] in 'AEIOU' else 'a'} " \
                                    f"{row['accent']} accent says '{row['word']}'."
        if row["task"] == "mixtures":
            assert f"says '{row['word']}' over " in rec["output"]


def test_mixtures_same_split_and_decode(generated):
    root, _, _ = generated
    rows = _rows(root)
    mixes = [r for r in rows.values() if r["task"] == "mixtures"]
    assert {m["split"] for m in mixes} == {"train", "valid", "test"}
    for m in mixes:
        k, b = rows[m["keyword_id"]], rows[m["background_id"]]
        assert k["split"] == b["split"] == m["split"]
        assert m["label"] == m["word"] == k["word"] and m["background_class"] == b["label"]
        assert 0.0 <= m["snr_db"] <= 15.0
    audio, sr = sf.read(mixes[0]["path"])
    assert sr == 16000 and audio.ndim == 1 and audio.size == 40000 and np.isfinite(audio).all()


def test_deterministic(generated):
    root, _, recs = generated
    generate(root, seed=0)
    again = {s: json.loads((root / "instructions" / f"{s}.json").read_text()) for s in recs}
    assert again == recs
