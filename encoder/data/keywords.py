"""Task ``keywords`` of the embedded benchmark: 20 spoken words synthesised by espeak-ng, flite and festival.

espeak-ng: 8 English accents x variants m1-m8/f1-f5; flite: slt, rms, awb, kal; festival: kal, ked, slt_hts.
Natural length (silence trimmed, 50 ms margins), at most 1.28 s. Splits hold out whole espeak-ng variants (a
variant's timbre is shared across accents): train m1-m5,f1-f3; valid m6,f4; test m7,m8,f5. Every flite/festival
clip is in ``test_xengine``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from encoder.data.sources import SR, item_rng, load, loudness_db, parallel, require, run, trim, write_wav

KEYWORDS = ("yes no up down left right on off stop go zero one two three four five six seven eight nine").split()
ESPEAK_ACCENTS = {  # espeak-ng voice -> accent name
    "en-us": "American", "en-gb": "British", "en-gb-scotland": "Scottish", "en-gb-x-rp": "Received Pronunciation",
    "en-gb-x-gbclan": "Lancastrian", "en-gb-x-gbcwmd": "West Midlands", "en-029": "Caribbean",
    "en-us-nyc": "New York",
}
ESPEAK_VARIANT_SPLIT = {
    **{f"m{i}": "train" for i in range(1, 6)}, **{f"f{i}": "train" for i in range(1, 4)},
    "m6": "valid", "f4": "valid", "m7": "test", "m8": "test", "f5": "test",
}
FLITE_VOICES = {"slt": ("female", "American"), "rms": ("male", "American"), "awb": ("male", "Scottish"),
                "kal": ("male", "American")}
FLITE_F0 = {"slt": 170.0, "rms": 110.0, "awb": 110.0, "kal": 105.0}
FESTIVAL_VOICES = {"kal": ("voice_kal_diphone", "male", "American"), "ked": ("voice_ked_diphone", "male", "American"),
                   "slt_hts": ("voice_cmu_us_slt_arctic_hts", "female", "American")}
KEYWORD_MAX_S = 1.28

KEYWORD_PROFILES = {
    "small": {"accents": ["en-us", "en-gb-scotland"], "espeak_reps": 1, "flite_reps": 1, "festival_reps": 1},
    "full": {"accents": list(ESPEAK_ACCENTS), "espeak_reps": 2, "flite_reps": 4, "festival_reps": 3},
}


def keyword_specs(profile: str, seed: int, limit: int | None = None) -> list[dict[str, Any]]:
    """Every keyword clip to synthesise, with its random speed and pitch (deterministic for the seed)."""
    p = KEYWORD_PROFILES[profile]
    words = KEYWORDS[:limit] if limit else KEYWORDS
    specs = []
    for word in words:
        for accent in p["accents"]:
            for variant, split in ESPEAK_VARIANT_SPLIT.items():
                for rep in range(p["espeak_reps"]):
                    r = item_rng(seed, "espeak", word, accent, variant, rep)
                    specs.append({
                        "id": f"espeak_{accent}_{variant}_{word}_{rep}", "word": word, "engine": "espeak-ng",
                        "voice": f"{accent}+{variant}", "speaker": f"espeak-ng:{variant}",
                        "gender": "male" if variant.startswith("m") else "female", "accent": ESPEAK_ACCENTS[accent],
                        "speed": round(float(r.uniform(0.75, 1.3)), 3), "pitch": round(float(r.uniform(0.6, 1.4)), 3),
                        "split": split,
                    })
        for voice, (gender, accent) in FLITE_VOICES.items():
            for rep in range(p["flite_reps"]):
                r = item_rng(seed, "flite", word, voice, rep)
                specs.append({
                    "id": f"flite_{voice}_{word}_{rep}", "word": word, "engine": "flite", "voice": voice,
                    "speaker": f"flite:{voice}", "gender": gender, "accent": accent,
                    "speed": round(float(r.uniform(0.8, 1.25)), 3) if rep else 1.0,
                    "pitch": round(float(r.uniform(0.8, 1.25)), 3) if rep else 1.0, "split": "test_xengine",
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
    specs = keyword_specs(profile, seed, limit)
    simple = [s for s in specs if s["engine"] != "festival"]
    n_chunks = max(1, jobs * 4)
    work: list[tuple[Any, tuple]] = [(_synth_simple, (simple[i::n_chunks], str(task_dir))) for i in range(n_chunks)]
    for voice in FESTIVAL_VOICES:
        fest = [s for s in specs if s["engine"] == "festival" and s["voice"] == voice]
        if fest:
            work.append((_synth_festival, (fest, str(task_dir))))
    return parallel(work, jobs)
