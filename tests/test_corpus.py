"""The unlabeled pretraining corpus (encoder/data/corpus.py): its size and kinds, never a held-out voice, soundfont,
program or recording, reproducible, cached, and read by pretraining as WebDataset shards."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from encoder.data import corpus as C
from encoder.data.environment import ensure_0ad_audio, environment_specs
from encoder.data.instruments import TEST_SOUNDFONT, _valid_programs
from encoder.data.keywords import ESPEAK_VARIANT_SPLIT
from encoder.data.shards import read_index, verify_shards
from encoder.data.sources import SR

pytestmark = pytest.mark.data


def _records(folder):
    out = []
    for shard in read_index(folder)["shards"]:
        with tarfile.open(folder / shard["name"]) as tf:
            members = {m.name: m for m in tf.getmembers()}
            for name in sorted(n for n in members if n.endswith(".json")):
                rec = json.loads(tf.extractfile(members[name]).read())
                audio, sr = sf.read(io.BytesIO(tf.extractfile(members[name[:-5] + ".flac"]).read()))
                out.append((rec, audio, sr))
    return out


def test_the_corpus_has_its_size_and_kinds_and_decodes(embedded_corpus):
    info = json.loads((embedded_corpus / "corpus.json").read_text())
    assert info["clips"] == read_index(embedded_corpus)["num_clips"] == 512
    assert verify_shards(embedded_corpus) == []
    recs = _records(embedded_corpus)
    kinds = {k: sum(r["kind"] == k for r, _, _ in recs) for k in C.MIX}
    assert kinds == C.kind_counts(512) == info["kinds"]
    for rec, audio, sr in recs:
        assert sr == SR and audio.ndim == 1 and 0.1 <= audio.size / SR <= 2.5
        assert np.isfinite(audio).all() and 1e-3 < np.abs(audio).max() <= 1.0, rec["id"]
    # a batch mixes kinds: the first shard's first 50 clips are not one kind
    assert len({r["kind"] for r, _, _ in recs[:50]}) >= 3


def test_the_corpus_never_uses_a_held_out_voice_soundfont_program_or_recording(embedded_corpus):
    recs = [r for r, _, _ in _records(embedded_corpus)]
    speakers = {r["speaker"] for r in recs if r["kind"] == "speech"}
    assert speakers and all(s.startswith(("espeak-ng:", "flite:")) for s in speakers)
    for s in speakers:
        engine, name = s.split(":", 1)
        assert (ESPEAK_VARIANT_SPLIT[name] == "train") if engine == "espeak-ng" else name in ("rms", "awb")
    held = _valid_programs(0)
    music = [r for r in recs if r["kind"] == "music"]
    assert music and all(r["soundfont"] != TEST_SOUNDFONT for r in music)
    assert not {p for r in music for p in r.get("programs", [])} & held
    src = ensure_0ad_audio()
    held_files = {f"0ad-data/{s['source']}" for p in ("small", "full") for s in environment_specs(src, p, 0)
                  if s["split"] != "train"}
    used = {f for r in recs if r["kind"] in ("effects", "mixtures") for f in r["sources"]}
    assert used and not used & held_files
    assert all(len(r["sources"]) == 2 and r["sources"][0] != r["sources"][1] for r in recs if r["kind"] == "mixtures")


def test_the_corpus_is_reproducible_and_cached(embedded_corpus, tmp_path):
    info = C.build_corpus(tmp_path, 512, seed=0)
    assert [s["sha256"] for s in read_index(C.corpus_dir(tmp_path))["shards"]] == \
        [s["sha256"] for s in read_index(embedded_corpus)["shards"]]
    mtime = (C.corpus_dir(tmp_path) / "index.json").stat().st_mtime_ns
    assert C.build_corpus(tmp_path, 300, seed=0) == info  # a corpus at least as large is reused
    assert (C.corpus_dir(tmp_path) / "index.json").stat().st_mtime_ns == mtime
    other = C.build_corpus(tmp_path, 40, seed=1)  # another seed is another corpus
    assert other["seed"] == 1 and other["clips"] == 40


def test_kind_counts_add_up():
    for n in (1, 7, 200, 38400):
        counts = C.kind_counts(n)
        assert sum(counts.values()) == n and set(counts) == set(C.MIX)
    with pytest.raises(ValueError, match="at least one clip"):
        C.build_corpus("/nonexistent", 0)


def test_voiced_segments_cut_at_silences():
    t = np.arange(int(0.3 * SR)) / SR
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    gap = np.zeros(int(0.5 * SR))
    short_gap = np.zeros(int(0.1 * SR))
    audio = np.concatenate([gap, tone, short_gap, tone, gap, tone, gap]).astype(np.float32)
    segs = C._voiced_segments(audio)
    assert len(segs) == 2  # the 100 ms gap does not split a phrase, the 500 ms one does
    assert abs(segs[0].size / SR - 0.8) < 0.05 and abs(segs[1].size / SR - 0.4) < 0.05
    assert C._voiced_segments(np.zeros(SR, dtype=np.float32)) == []


def test_dictionary_words_are_plain_words():
    words = C.dictionary_words()
    assert len(words) > 50000 and all(w.isalpha() and 2 <= len(w) <= 12 for w in words[:1000])
    rng = np.random.default_rng(0)
    phrases = C._phrases(rng, words, 200)
    assert all(1 <= len(p.split()) <= 3 for p in phrases) and len(set(phrases)) > 150
