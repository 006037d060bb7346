"""Task ``keywords`` of the embedded benchmark: 20 spoken words synthesised by espeak-ng, flite and festival.

espeak-ng: all 101 voice variants of espeak-ng 1.51 (``espeak-ng --voices=variant``: Adam, Alex, klatt*, f1-f5,
m1-m8, whisper, croak, robosoft*, ...) across 8 English accents, with random speed and pitch. Two variants are left
out because they render sample-identical audio to ``klatt`` (``caleb``, ``klatt6``); none renders unusable audio
(every variant says every word in 0.3-1.0 s); ``fast`` (fast_test) renders the default voice. Splits hold out whole
variants, ~70/10/20 with both genders in each (:data:`ESPEAK_VARIANT_SPLIT`); variants whose output is nearly
identical (the klatt family with adam, benjamin, edward*; steph*; iven*; RicishayMax*; john/Mr
serious/Tweaky/norbert; Henrique/Hugo; Diogo/michel; Mario/Michael; robosoft*) share a split. Each variant says each
word ``espeak_reps`` times, each time in another accent (rotating through the profile's accents). flite's own
speakers ``rms`` and ``awb`` are in train too.

``test_xengine`` holds out an engine: every festival clip (kal and ked diphone, slt HTS). flite's ``slt`` and
``kal`` are built from the same speaker databases (CMU ARCTIC slt, CMU kal diphones) as festival's, so they are in
no split: in train they would leak the held-out speakers. Natural length (silence trimmed, 50 ms margins), at most
1.28 s.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from encoder.data.sources import SR, BuildError, item_rng, load, loudness_db, parallel, require, run, trim, write_wav

KEYWORDS = ("yes no up down left right on off stop go zero one two three four five six seven eight nine").split()
ESPEAK_ACCENTS = {  # espeak-ng voice -> accent name
    "en-us": "American", "en-gb": "British", "en-gb-scotland": "Scottish", "en-gb-x-rp": "Received Pronunciation",
    "en-gb-x-gbclan": "Lancastrian", "en-gb-x-gbcwmd": "West Midlands", "en-029": "Caribbean",
    "en-us-nyc": "New York",
}
# espeak-ng variant (its file under espeak-ng-data/voices/!v) -> split; the rest of ESPEAK_VARIANTS is train
_VALID = "m6 Diogo michel grandpa RicishayMax RicishayMax2 RicishayMax3 travis f4 Alicia"
_TEST = "m7 m8 croak Demonic announcer Storm Henrique Hugo iven iven2 iven3 iven4 Jacky Marco shelby whisper " \
        "f5 anika anikaRobot linda"
_TRAIN = (
    "m1 m2 m3 m4 m5 adam Alex Andy AnxiousAndy antonio benjamin boris david Denis ed edward edward2 fast Gene Gene2 "
    "gustave john kaukovalta klatt klatt2 klatt3 klatt4 klatt5 Lee marcelo Mario max Michael miguel Mike Mr|serious "
    "Nguyen norbert pablo paul pedro quincy rob robert robosoft robosoft2 robosoft3 robosoft4 robosoft5 robosoft6 "
    "robosoft7 robosoft8 sandro Tweaky UniRobot victor zac "
    "f1 f2 f3 Andrea Annie aunty belinda steph steph2 steph3 whisperf grandma")
ESPEAK_VARIANT_SPLIT = {v.replace("|", " "): split for split, names in (("train", _TRAIN), ("valid", _VALID),
                                                                        ("test", _TEST)) for v in names.split()}
ESPEAK_FEMALE = {"f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "aunty", "belinda", "linda", "steph",
                 "steph2", "steph3", "anika", "anikaRobot", "whisperf", "grandma"}  # espeak-ng's own gender tags
ESPEAK_DUPLICATES = ("caleb", "klatt6")  # render the same samples as klatt: left out
FLITE_VOICES = {"rms": ("male", "American"), "awb": ("male", "Scottish")}  # train; slt/kal: festival's speakers
FLITE_F0 = {"rms": 110.0, "awb": 110.0}
FESTIVAL_VOICES = {"kal": ("voice_kal_diphone", "male", "American"), "ked": ("voice_ked_diphone", "male", "American"),
                   "slt_hts": ("voice_cmu_us_slt_arctic_hts", "female", "American")}
KEYWORD_MAX_S = 1.28

_SMALL = tuple("m1 m2 m3 m4 m5 Alex klatt robosoft Andy zac f1 f2 f3 steph whisperf grandma "  # 16 train,
               "m6 Diogo f4 grandpa m7 m8 croak whisper f5 linda".split())  # 4 valid, 6 test
KEYWORD_PROFILES = {  # variants: None = all of ESPEAK_VARIANT_SPLIT
    "small": {"accents": ["en-us", "en-gb-scotland"], "espeak_reps": 1, "flite_reps": 1, "festival_reps": 1,
              "variants": _SMALL},
    "full": {"accents": list(ESPEAK_ACCENTS), "espeak_reps": 2, "flite_reps": 4, "festival_reps": 7, "variants": None},
}


def espeak_variant_id(variant: str) -> str:
    """The variant's name in clip ids (``Mr serious`` -> ``Mr_serious``)."""
    return variant.replace(" ", "_")


def keyword_specs(profile: str, seed: int, limit: int | None = None) -> list[dict[str, Any]]:
    """Every keyword clip to synthesise, with its random speed and pitch (deterministic for the seed)."""
    p = KEYWORD_PROFILES[profile]
    words = KEYWORDS[:limit] if limit else KEYWORDS
    variants = list(ESPEAK_VARIANT_SPLIT)
    chosen = p["variants"] or variants
    specs = []
    for wi, word in enumerate(words):
        for vi, variant in enumerate(variants):
            if variant not in chosen:
                continue
            for rep in range(p["espeak_reps"]):
                accent = p["accents"][(vi * p["espeak_reps"] + rep + wi) % len(p["accents"])]
                r = item_rng(seed, "espeak", word, accent, variant, rep)
                specs.append({
                    "id": f"espeak_{accent}_{espeak_variant_id(variant)}_{word}_{rep}", "word": word,
                    "engine": "espeak-ng", "voice": f"{accent}+{variant}", "speaker": f"espeak-ng:{variant}",
                    "gender": "female" if variant in ESPEAK_FEMALE else "male", "accent": ESPEAK_ACCENTS[accent],
                    "speed": round(float(r.uniform(0.75, 1.3)), 3), "pitch": round(float(r.uniform(0.6, 1.4)), 3),
                    "split": ESPEAK_VARIANT_SPLIT[variant],
                })
        for voice, (gender, accent) in FLITE_VOICES.items():
            for rep in range(p["flite_reps"]):
                r = item_rng(seed, "flite", word, voice, rep)
                specs.append({
                    "id": f"flite_{voice}_{word}_{rep}", "word": word, "engine": "flite", "voice": voice,
                    "speaker": f"flite:{voice}", "gender": gender, "accent": accent,
                    "speed": round(float(r.uniform(0.8, 1.25)), 3) if rep else 1.0,
                    "pitch": round(float(r.uniform(0.8, 1.25)), 3) if rep else 1.0, "split": "train",
                })
        for voice, (_, gender, accent) in FESTIVAL_VOICES.items():
            for rep in range(p["festival_reps"]):
                r = item_rng(seed, "festival", word, voice, rep)
                specs.append({
                    "id": f"festival_{voice}_{word}_{rep}", "word": word, "engine": "festival", "voice": voice,
                    "speaker": f"festival:{voice}", "gender": gender, "accent": accent,
                    "speed": round(float(r.uniform(0.8, 1.25)), 3) if rep else 1.0, "pitch": 1.0,
                    "split": "test_xengine",
                })
    return specs


def installed_espeak_variants() -> set[str]:
    """The variant files ``espeak-ng --voices=variant`` lists (a missing one would silently fall back to default)."""
    out = run(["espeak-ng", "--voices=variant"]).stdout.decode()
    return {m.group(1) for m in re.finditer(r"!v/(.+?)\s*(?:\([^)]*\))?\s*$", out, re.MULTILINE)}


def _finish_keyword(spec: dict[str, Any], audio: np.ndarray, out_dir: Path) -> dict[str, Any] | None:
    audio = trim(audio)
    if audio.size < int(0.1 * SR):
        return None
    truncated = audio.size > int(KEYWORD_MAX_S * SR)
    audio = audio[: int(KEYWORD_MAX_S * SR)]
    audio = 0.8 * audio / max(float(np.abs(audio).max()), 1e-6)
    rel = f"clips/{spec['id']}.wav"
    write_wav(out_dir / rel, audio)
    row = {"id": spec["id"], "path": rel, "label": spec["word"], "split": spec["split"], "task": "keywords",
           "text": spec["word"], **{k: v for k, v in spec.items() if k not in ("id", "split")},
           "duration": round(audio.size / SR, 4), "loudness": loudness_db(audio), "truncated": truncated}
    return row


def _synth_simple(args: tuple[list[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """espeak-ng / flite: one process per utterance (each starts in ~20 ms)."""
    specs, out_dir = args
    out = Path(out_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        for s in specs:
            if s["engine"] == "espeak-ng":
                cmd = ["espeak-ng", "-v", s["voice"], "-s", str(int(round(175 * s["speed"]))),
                       "-p", str(int(round(50 * s["pitch"]))), "-w", str(wav), s["word"]]
            else:
                cmd = ["flite", "-voice", s["voice"], "--setf", f"duration_stretch={1 / s['speed']:.4f}",
                       "--setf", f"int_f0_target_mean={FLITE_F0[s['voice']] * s['pitch']:.1f}",
                       "-t", s["word"], "-o", str(wav)]
            run(cmd)
            row = _finish_keyword(s, load(wav), out)
            if row:
                rows.append(row)
    return rows


def _synth_festival(args: tuple[list[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """festival: one process per voice renders all its utterances (startup costs ~0.4 s)."""
    specs, out_dir = args
    out = Path(out_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lines = [f"({FESTIVAL_VOICES[specs[0]['voice']][0]})"]
        for i, s in enumerate(specs):
            lines.append(f"(Parameter.set 'Duration_Stretch {1 / s['speed']:.4f})")
            lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{s["word"]}")) "{tmp}/{i}.wav" \'riff)')
        script = Path(tmp) / "synth.scm"
        script.write_text("\n".join(lines) + "\n")
        run(["festival", "--batch", str(script)])
        for i, s in enumerate(specs):
            row = _finish_keyword(s, load(Path(tmp) / f"{i}.wav"), out)
            if row:
                rows.append(row)
    return rows


def build_keywords(task_dir: Path, profile: str, seed: int, jobs: int, limit: int | None) -> list[dict[str, Any]]:
    """Synthesise the keyword clips into ``task_dir/clips``; returns the manifest rows."""
    for tool, pkg in (("espeak-ng", "espeak-ng"), ("flite", "flite"), ("festival", "festival")):
        require(tool, pkg)
    missing = sorted(set(ESPEAK_VARIANT_SPLIT) - installed_espeak_variants())
    if missing:
        raise BuildError(f"espeak-ng lacks voice variant(s) {missing}: install Debian bookworm's espeak-ng (1.51)")
    specs = keyword_specs(profile, seed, limit)
    simple = [s for s in specs if s["engine"] != "festival"]
    n_chunks = max(1, jobs * 4)
    work: list[tuple[Any, tuple]] = [(_synth_simple, (simple[i::n_chunks], str(task_dir))) for i in range(n_chunks)]
    for voice in FESTIVAL_VOICES:
        fest = [s for s in specs if s["engine"] == "festival" and s["voice"] == voice]
        if fest:
            work.append((_synth_festival, (fest, str(task_dir))))
    return parallel(work, jobs)
