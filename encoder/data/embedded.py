"""Embedded offline benchmark: three labelled tasks built reproducibly from Debian packages.

* ``keywords``    -- 20 spoken words from espeak-ng (8 English accents x variants m1-m8/f1-f5), flite (slt, rms,
  awb, kal) and festival (kal, ked, slt_hts). Natural length (silence trimmed, 50 ms margins), at most 1.28 s.
  Splits hold out whole espeak-ng variants (a variant's timbre is shared across accents): train m1-m5,f1-f3;
  valid m6,f4; test m7,m8,f5. Every flite/festival clip is in ``test_xengine``.
* ``instruments`` -- single notes of GM programs rendered by fluidsynth (reverb/chorus off) from FluidR3_GM,
  TimGM6mb and MuseScore_General; 2.0 s clips (note on 1.5 s, release kept). MuseScore_General is the test split;
  valid holds out one program per GM family (both other fonts), so valid instruments are unseen in train.
  Silent renders (RMS below -60 dBFS) are dropped.
* ``environment`` -- sound effects from Debian's ``0ad-data`` (CC-BY-SA-3.0), 16 classes named after their folder
  and file names. Fixed 2.5 s segments: a long file gives consecutive non-overlapping segments (near-silent ones
  skipped), a short one is zero-padded at the end. Splits are made per source file, so all segments of a file share
  one split.

Layout: ``{root}/{task}/clips/*.wav`` (16 kHz mono PCM16), ``{root}/{task}/manifest.jsonl``,
``{root}/{task}/classes.json``, ``{root}/build_info.json``. Deterministic for a seed: each item draws from its own
RNG derived from (seed, item key). Run ``python -m encoder.data.embedded --help``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import soundfile as sf

from encoder.data.manifest import write_manifest

VERSION = "1.1"
SR = 16000
TASKS = ("keywords", "instruments", "environment")
SPLITS = ("train", "valid", "test", "test_xengine")
PROFILES = ("small", "full")


class BuildError(RuntimeError):
    """A missing tool or download, named with the Debian package that provides it."""


# ----------------------------------------------------------------------------------------------------- helpers
def cache_dir() -> Path:
    """Download/extract cache: ``$MOSAIC_ALM_CACHE`` or ``~/.cache/mosaic-alm``."""
    return Path(os.environ.get("MOSAIC_ALM_CACHE", Path.home() / ".cache" / "mosaic-alm"))


def item_rng(seed: int, *key: Any) -> np.random.Generator:
    """An RNG that depends only on the seed and the item's key (independent of order and worker)."""
    digest = hashlib.sha256(repr((seed,) + key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BuildError(f"'{tool}' not found: install the Debian package '{package}' (apt-get install {package})")
    return path


def _run(cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), capture_output=True, **kw)
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip().splitlines()[-3:] if res.stderr else []
        raise BuildError(f"{cmd[0]} failed (exit {res.returncode}): {' | '.join(err)}")
    return res


def _to_mono16k(audio: np.ndarray, sr: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if sr != SR:
        import soxr

        audio = soxr.resample(audio, sr, SR, quality="HQ").astype(np.float32)
    return audio


def _load(path: str | Path) -> np.ndarray:
    audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
    return _to_mono16k(audio, sr)


def _write_wav(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0), SR, subtype="PCM_16")


def loudness_db(audio: np.ndarray) -> float:
    """RMS level in dBFS (floor -120)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return round(20 * np.log10(max(rms, 1e-6)), 2)


def _trim(audio: np.ndarray, rel_db: float = -40.0, margin_s: float = 0.05) -> np.ndarray:
    """Cut leading/trailing parts quieter than ``rel_db`` below the loudest 10 ms frame; keep margins."""
    hop = SR // 100
    n = len(audio) // hop
    if n == 0:
        return audio
    frames = audio[: n * hop].reshape(n, hop)
    level = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    active = np.nonzero(level > level.max() + rel_db)[0]
    if active.size == 0:
        return audio[:0]
    m = int(margin_s * SR)
    return audio[max(0, active[0] * hop - m): min(len(audio), (active[-1] + 1) * hop + m)]


# --------------------------------------------------------------------------------------------------- keywords
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
    audio = _trim(audio)
    if audio.size < int(0.1 * SR):
        return None
    truncated = audio.size > int(KEYWORD_MAX_S * SR)
    audio = audio[: int(KEYWORD_MAX_S * SR)]
    audio = 0.8 * audio / max(float(np.abs(audio).max()), 1e-6)
    rel = f"clips/{spec['id']}.wav"
    _write_wav(out_dir / rel, audio)
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
            _run(cmd)
            row = _finish_keyword(s, _load(wav), out)
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
        _run(["festival", "--batch", str(script)])
        for i, s in enumerate(specs):
            row = _finish_keyword(s, _load(Path(tmp) / f"{i}.wav"), out)
            if row:
                rows.append(row)
    return rows


def _build_keywords(task_dir: Path, profile: str, seed: int, jobs: int, limit: int | None) -> list[dict[str, Any]]:
    for tool, pkg in (("espeak-ng", "espeak-ng"), ("flite", "flite"), ("festival", "festival")):
        _require(tool, pkg)
    specs = keyword_specs(profile, seed, limit)
    simple = [s for s in specs if s["engine"] != "festival"]
    n_chunks = max(1, jobs * 4)
    work: list[tuple[Any, tuple]] = [(_synth_simple, (simple[i::n_chunks], str(task_dir))) for i in range(n_chunks)]
    for voice in FESTIVAL_VOICES:
        fest = [s for s in specs if s["engine"] == "festival" and s["voice"] == voice]
        if fest:
            work.append((_synth_festival, (fest, str(task_dir))))
    return _parallel(work, jobs)


# ------------------------------------------------------------------------------------------------ instruments
GM_FAMILIES = ("piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass", "reed",
               "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive", "sound effects")
GM_PROGRAMS = (
    "Acoustic Grand Piano|Bright Acoustic Piano|Electric Grand Piano|Honky-tonk Piano|Electric Piano 1|"
    "Electric Piano 2|Harpsichord|Clavinet|Celesta|Glockenspiel|Music Box|Vibraphone|Marimba|Xylophone|"
    "Tubular Bells|Dulcimer|Drawbar Organ|Percussive Organ|Rock Organ|Church Organ|Reed Organ|Accordion|Harmonica|"
    "Tango Accordion|Acoustic Guitar (nylon)|Acoustic Guitar (steel)|Electric Guitar (jazz)|"
    "Electric Guitar (clean)|Electric Guitar (muted)|Overdriven Guitar|Distortion Guitar|Guitar Harmonics|"
    "Acoustic Bass|Electric Bass (finger)|Electric Bass (pick)|Fretless Bass|Slap Bass 1|Slap Bass 2|Synth Bass 1|"
    "Synth Bass 2|Violin|Viola|Cello|Contrabass|Tremolo Strings|Pizzicato Strings|Orchestral Harp|Timpani|"
    "String Ensemble 1|String Ensemble 2|Synth Strings 1|Synth Strings 2|Choir Aahs|Voice Oohs|Synth Voice|"
    "Orchestra Hit|Trumpet|Trombone|Tuba|Muted Trumpet|French Horn|Brass Section|Synth Brass 1|Synth Brass 2|"
    "Soprano Sax|Alto Sax|Tenor Sax|Baritone Sax|Oboe|English Horn|Bassoon|Clarinet|Piccolo|Flute|Recorder|"
    "Pan Flute|Blown Bottle|Shakuhachi|Whistle|Ocarina|Lead 1 (square)|Lead 2 (sawtooth)|Lead 3 (calliope)|"
    "Lead 4 (chiff)|Lead 5 (charang)|Lead 6 (voice)|Lead 7 (fifths)|Lead 8 (bass + lead)|Pad 1 (new age)|"
    "Pad 2 (warm)|Pad 3 (polysynth)|Pad 4 (choir)|Pad 5 (bowed)|Pad 6 (metallic)|Pad 7 (halo)|Pad 8 (sweep)|"
    "FX 1 (rain)|FX 2 (soundtrack)|FX 3 (crystal)|FX 4 (atmosphere)|FX 5 (brightness)|FX 6 (goblins)|"
    "FX 7 (echoes)|FX 8 (sci-fi)|Sitar|Banjo|Shamisen|Koto|Kalimba|Bagpipe|Fiddle|Shanai|Tinkle Bell|Agogo|"
    "Steel Drums|Woodblock|Taiko Drum|Melodic Tom|Synth Drum|Reverse Cymbal|Guitar Fret Noise|Breath Noise|"
    "Seashore|Bird Tweet|Telephone Ring|Helicopter|Applause|Gunshot"
).split("|")
assert len(GM_PROGRAMS) == 128
FAMILY_RANGE = {  # playable MIDI range per family (low, high)
    "piano": (36, 96), "chromatic percussion": (60, 96), "organ": (36, 84), "guitar": (40, 76), "bass": (28, 55),
    "strings": (40, 84), "ensemble": (40, 80), "brass": (45, 77), "reed": (48, 80), "pipe": (60, 96),
    "synth lead": (48, 84), "synth pad": (40, 84), "synth effects": (40, 84), "ethnic": (48, 84),
    "percussive": (45, 72), "sound effects": (48, 72),
}
PROGRAM_RANGE = {40: (55, 91), 41: (48, 81), 42: (36, 69), 43: (28, 55), 47: (36, 55), 57: (40, 72), 58: (28, 58),
                 70: (34, 67), 67: (36, 67), 72: (74, 100)}
SOUNDFONTS = {  # name -> (path, Debian package)
    "FluidR3_GM": ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "fluid-soundfont-gm"),
    "TimGM6mb": ("/usr/share/sounds/sf2/TimGM6mb.sf2", "timgm6mb-soundfont"),
    "MuseScore_General": ("/usr/share/sounds/sf3/MuseScore_General.sf3", "musescore-general-soundfont-small"),
}
TEST_SOUNDFONT = "MuseScore_General"
VELOCITIES = {"soft": 45, "loud": 110}
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
INSTRUMENT_PROFILES = {"small": {"programs_per_family": 2, "pitches": 2}, "full": {"programs_per_family": 8, "pitches": 4}}
NOTE_ON_S, CLIP_S, SLOT_S = 1.5, 2.0, 2.2
SILENCE_DB = -60.0


def gm_family(program: int) -> str:
    """GM family of a program number 0..127."""
    return GM_FAMILIES[program // 8]


def note_name(note: int) -> str:
    return f"{NOTE_NAMES[note % 12]}{note // 12 - 1}"


def _valid_programs(seed: int) -> set[int]:
    """One program per family held out for the valid split."""
    return {f * 8 + int(item_rng(seed, "valid_program", f).integers(8)) for f in range(16)}


def instrument_specs(profile: str, seed: int, limit: int | None = None) -> list[dict[str, Any]]:
    """Notes to render: programs x pitches x velocities x soundfonts, with their split."""
    p = INSTRUMENT_PROFILES[profile]
    valid = _valid_programs(seed)
    programs = []
    for f in range(16):
        fam = list(range(f * 8, f * 8 + 8))
        if p["programs_per_family"] < 8:  # keep the valid program, then random others
            v = next(x for x in fam if x in valid)
            rest = [x for x in fam if x != v]
            pick = item_rng(seed, "programs", f).permutation(rest)[: p["programs_per_family"] - 1]
            fam = sorted([v, *map(int, pick)])
        programs += fam
    if limit:
        programs = programs[:limit]
    specs = []
    for font in SOUNDFONTS:
        for prog in programs:
            lo, hi = PROGRAM_RANGE.get(prog, FAMILY_RANGE[gm_family(prog)])
            r = item_rng(seed, "pitches", font, prog)
            qs = np.linspace(0.1, 0.9, p["pitches"])
            notes = sorted({int(np.clip(round(lo + q * (hi - lo) + r.integers(-2, 3)), lo, hi)) for q in qs})
            for note in notes:
                for dyn, vel in VELOCITIES.items():
                    split = "test" if font == TEST_SOUNDFONT else "valid" if prog in valid else "train"
                    specs.append({"id": f"{font}_p{prog:03d}_n{note:03d}_v{vel:03d}", "soundfont": font,
                                  "program": prog, "note": note, "velocity": vel, "dynamics": dyn, "split": split})
    return specs


def _render_batch(args: tuple[str, list[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """Render notes of one soundfont in one fluidsynth run (one MIDI, notes in sequence), then slice."""
    import mido

    font, specs, out_dir = args
    out = Path(out_dir)
    tpb, tps = 480, 960  # ticks per beat; 500000 us per beat -> 960 ticks per second
    mid = mido.MidiFile(ticks_per_beat=tpb)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))
    for s in specs:
        track.append(mido.Message("program_change", program=s["program"], channel=0, time=0))
        track.append(mido.Message("note_on", note=s["note"], velocity=s["velocity"], channel=0, time=0))
        track.append(mido.Message("note_off", note=s["note"], velocity=0, channel=0, time=int(NOTE_ON_S * tps)))
        track.append(mido.Message("control_change", control=120, value=0, channel=0,
                                  time=int((CLIP_S - NOTE_ON_S) * tps)))
        track.append(mido.Message("control_change", control=121, value=0, channel=0,
                                  time=int((SLOT_S - CLIP_S) * tps)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        midi, wav = Path(tmp) / "notes.mid", Path(tmp) / "notes.wav"
        mid.save(str(midi))
        _run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r", str(SR), "-F", str(wav),
              SOUNDFONTS[font][0], str(midi)])
        audio = _load(wav)
    slot, n = int(SLOT_S * SR), int(CLIP_S * SR)
    for i, s in enumerate(specs):
        clip = audio[i * slot: i * slot + n]
        clip = np.pad(clip, (0, n - clip.size))
        level = loudness_db(clip)
        if level < SILENCE_DB or not np.isfinite(clip).all():
            continue
        rel = f"clips/{s['id']}.wav"
        _write_wav(out / rel, clip)
        prog = s["program"]
        rows.append({"id": s["id"], "path": rel, "label": gm_family(prog), "split": s["split"], "task": "instruments",
                     "family": gm_family(prog), "program": prog, "program_name": GM_PROGRAMS[prog],
                     "note": s["note"], "note_name": note_name(s["note"]),
                     "pitch_hz": round(440.0 * 2 ** ((s["note"] - 69) / 12), 2), "velocity": s["velocity"],
                     "dynamics": s["dynamics"], "soundfont": font, "loudness": level, "duration": CLIP_S})
    return rows


def _build_instruments(task_dir: Path, profile: str, seed: int, jobs: int, limit: int | None) -> list[dict[str, Any]]:
    _require("fluidsynth", "fluidsynth")
    for name, (path, pkg) in SOUNDFONTS.items():
        if not Path(path).exists():
            raise BuildError(f"soundfont {path} not found: install the Debian package '{pkg}'")
    specs = instrument_specs(profile, seed, limit)
    work = []
    for font in SOUNDFONTS:
        fs = [s for s in specs if s["soundfont"] == font]
        n = max(1, min(len(fs) // 64, 2 * jobs)) if font != TEST_SOUNDFONT else max(1, min(len(fs) // 256, jobs))
        work += [(_render_batch, (font, fs[i::n], str(task_dir))) for i in range(n)]
    return _parallel(work, jobs)


# ------------------------------------------------------------------------------------------------ environment
OAD_PACKAGE, OAD_VERSION = "0ad-data", "0.0.26-1"
OAD_PREFIXES = ("audio/actor/", "audio/ambient/", "audio/attack/", "audio/resource/")
SEGMENT_S = 2.5
ENV_RULES: tuple[tuple[str, str, Any], ...] = (  # (class, path prefix, file-name test)
    ("birds", "audio/ambient/dayscape/", lambda n: n.startswith("day_")),
    ("wind", "audio/ambient/weather/", lambda n: n.startswith(("wind_", "windgust", "windleaves"))),
    ("storm", "audio/ambient/weather/", lambda n: n.startswith(("rain_", "thunder_", "snowstorm", "windstorm"))),
    ("water", "audio/ambient/water/", lambda n: True),
    ("fire", "audio/attack/fire/", lambda n: True),
    ("crowd", "audio/ambient/building/", lambda n: n.startswith("amb_trade")),
    ("footsteps", "audio/actor/", lambda n: n.startswith(("footstep", "foorstep", "fs_", "hstep"))),
    ("horse", "audio/actor/", lambda n: n.startswith(("horse_", "death_horse"))),
    ("farm animals", "audio/actor/fauna/", lambda n: n.startswith(("cattle", "chicken", "pig", "sheep", "goat"))),
    ("wood chopping", "audio/resource/lumbering/", lambda n: n.startswith("lumber_tree_")),
    ("pick", "audio/resource/mining/", lambda n: True),
    ("sword", "audio/attack/weapon/", lambda n: n.startswith(("sword_attack", "swordhit"))),
    ("arrow impact", "audio/attack/impact/", lambda n: n.startswith("arrow_")),
    ("scream", "audio/actor/human/death/", lambda n: n.startswith(("male_death", "female_death"))),
    ("rustle", "audio/resource/foraging/", lambda n: n.startswith("leaves_")),
    ("sawing", "audio/resource/construction/", lambda n: n.startswith("con_saw")),
)
ENV_CLASSES = tuple(c for c, _, _ in ENV_RULES)
SURFACES = ("sand", "grass", "gravel", "rock", "wood", "snow", "dirt")
ENV_PROFILES = {"small": {"files_per_class": 8, "segments_per_file": 2},
                "full": {"files_per_class": 40, "segments_per_file": 12}}


def env_label(rel: str) -> tuple[str, dict[str, str]] | None:
    """Class and sub-labels (surface, material, species, gender) derived from a 0ad audio path, or None."""
    name = rel.rsplit("/", 1)[-1].lower()
    for cls, prefix, test in ENV_RULES:
        if rel.startswith(prefix) and test(name):
            sub: dict[str, str] = {}
            if cls == "footsteps":
                sub["surface"] = next((s for s in SURFACES if s in name), "unknown")
                if "running" in name or "_run_" in name:
                    sub["gait"] = "running"
                elif "walking" in name:
                    sub["gait"] = "walking"
            elif cls in ("pick", "arrow impact"):
                sub["material"] = next((m for m in ("metal", "stone", "dirt", "wood") if m in name), "unspecified")
            elif cls == "farm animals":
                sub["species"] = next(s for s in ("cattle", "chicken", "pig", "sheep", "goat") if name.startswith(s))
            elif cls == "scream":
                sub["gender"] = "female" if name.startswith("female") else "male"
            elif cls in ("wind", "storm"):
                sub["weather"] = name.split("_")[0]
            elif cls == "water":
                sub["water"] = name.rsplit("_", 1)[0]
            return cls, sub
    return None


def _iter_stored_zip(f: Any) -> Iterable[tuple[str, bytes | None, int]]:
    """Walk a zip archive from a non-seekable stream: yields (name, method, size); the caller reads size bytes."""
    while True:
        sig = f.read(4)
        if sig != b"PK\x03\x04":
            return
        _, flag, method, _, _, _, csize, _, nlen, elen = struct.unpack("<HHHHHIIIHH", f.read(26))
        name = f.read(nlen).decode("utf-8", "replace")
        f.read(elen)
        if flag & 8:
            raise BuildError("unsupported zip entry with a data descriptor in 0ad public.zip")
        yield name, method, csize


def ensure_0ad_audio(cache: Path | None = None) -> Path:
    """Download ``0ad-data`` with ``apt-get download`` (once) and extract the OGG effects needed (once).

    The .deb (1.4 GB) is streamed: ``dpkg-deb --fsys-tarfile`` -> tar member ``public.zip`` -> zip local headers;
    only entries under :data:`OAD_PREFIXES` are written. Returns the folder holding ``audio/...``.
    """
    cache = cache or cache_dir()
    out = cache / f"0ad-audio-{OAD_VERSION}"
    if (out / ".complete").exists():
        return out
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{OAD_PACKAGE}_*_all.deb"))
    if not found:
        _require("apt-get", "apt")
        t0 = time.time()
        print(f"downloading {OAD_PACKAGE} (~1.4 GB) with apt-get download into {debs} ...", file=sys.stderr)
        res = subprocess.run(["apt-get", "download", OAD_PACKAGE], cwd=debs, capture_output=True, text=True)
        found = sorted(debs.glob(f"{OAD_PACKAGE}_*_all.deb"))
        if res.returncode != 0 or not found:
            raise BuildError(f"'apt-get download {OAD_PACKAGE}' failed: {res.stderr.strip()[-300:]} "
                             f"(needs Debian's apt archive; or place the .deb in {debs})")
        print(f"downloaded in {time.time() - t0:.0f} s", file=sys.stderr)
    _require("dpkg-deb", "dpkg")
    tmp = Path(tempfile.mkdtemp(prefix=".0ad-", dir=cache))
    t0 = time.time()
    print(f"extracting 0ad audio from {found[-1].name} ...", file=sys.stderr)
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(found[-1])], stdout=subprocess.PIPE)
    n = 0
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            for member in tf:
                if not member.name.endswith("mods/public/public.zip"):
                    continue
                zf = tf.extractfile(member)
                for name, method, size in _iter_stored_zip(zf):
                    data = zf.read(size)
                    if name.startswith(OAD_PREFIXES) and name.endswith(".ogg"):
                        if method != 0:
                            import zlib

                            data = zlib.decompress(data, -15)
                        dest = tmp / name
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        dest.write_bytes(data)
                        n += 1
                break
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
    if n == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(f"no audio found in {found[-1]} (expected mods/public/public.zip with audio/*.ogg)")
    (tmp / ".complete").write_text(json.dumps({"files": n, "deb": found[-1].name}))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(f"extracted {n} files in {time.time() - t0:.0f} s", file=sys.stderr)
    return out


def environment_specs(src: Path, profile: str, seed: int, limit: int | None = None) -> list[dict[str, Any]]:
    """Source files per class (capped by profile) with a split per file: ~70/15/15, at least one test file."""
    p = ENV_PROFILES[profile]
    by_class: dict[str, list[tuple[str, dict[str, str]]]] = {c: [] for c in ENV_CLASSES}
    for f in sorted(src.rglob("*.ogg")):
        rel = f.relative_to(src).as_posix()
        lab = env_label(rel)
        if lab:
            by_class[lab[0]].append((rel, lab[1]))
    specs = []
    for cls, files in by_class.items():
        if not files:
            raise BuildError(f"no 0ad source file for class {cls!r}; the 0ad-data layout changed?")
        order = item_rng(seed, "env_files", cls).permutation(len(files))
        files = [files[i] for i in order][: (limit or p["files_per_class"])]
        n = len(files)
        n_test = max(1, round(0.15 * n))
        n_valid = max(1, round(0.15 * n)) if n >= 3 else 0
        for i, (rel, sub) in enumerate(files):
            split = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
            specs.append({"source": rel, "label": cls, "sub": sub, "split": split})
    return specs


def _segment_files(args: tuple[list[dict[str, Any]], str, str, int]) -> list[dict[str, Any]]:
    specs, src, out_dir, max_segments = args
    out = Path(out_dir)
    n = int(SEGMENT_S * SR)
    rows = []
    for s in specs:
        audio = _load(Path(src) / s["source"])
        dur = audio.size / SR
        trimmed = _trim(audio, rel_db=-50.0, margin_s=0.02) if audio.size < n else audio
        if trimmed.size < int(0.1 * SR):
            continue
        if trimmed.size <= n:
            segs = [(0.0, np.pad(trimmed, (0, n - trimmed.size)))]
        else:
            segs = [(k * SEGMENT_S, audio[k * n:(k + 1) * n]) for k in range(audio.size // n)]
            segs = [(t, a) for t, a in segs if loudness_db(a) > SILENCE_DB][:max_segments]
        stem = s["source"][len("audio/"):-4].replace("/", "_")
        for k, (t0, seg) in enumerate(segs):
            rid = f"{stem}_s{k}"
            rel = f"clips/{rid}.wav"
            _write_wav(out / rel, seg)
            rows.append({"id": rid, "path": rel, "label": s["label"], "split": s["split"], "task": "environment",
                         "class": s["label"], **s["sub"], "source": f"0ad-data/{s['source']}",
                         "source_duration": round(dur, 3), "offset": t0, "duration": SEGMENT_S,
                         "padded": bool(trimmed.size < n), "loudness": loudness_db(seg)})
    return rows


def _build_environment(task_dir: Path, profile: str, seed: int, jobs: int, limit: int | None) -> list[dict[str, Any]]:
    src = ensure_0ad_audio()
    specs = environment_specs(src, profile, seed, limit)
    k = max(1, jobs * 4)
    per = ENV_PROFILES[profile]["segments_per_file"]
    return _parallel([(_segment_files, (specs[i::k], str(src), str(task_dir), per)) for i in range(k)], jobs)


# ------------------------------------------------------------------------------------------------------ build
BUILDERS = {"keywords": (_build_keywords, list(KEYWORDS)), "instruments": (_build_instruments, list(GM_FAMILIES)),
            "environment": (_build_environment, list(ENV_CLASSES))}


def _parallel(work: list[tuple[Any, tuple]], jobs: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if jobs <= 1:
        for fn, args in work:
            rows += fn(args)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as ex:
            for part in ex.map(_call, work):
                rows += part
    return sorted(rows, key=lambda r: r["id"])


def _call(item: tuple[Any, tuple]) -> list[dict[str, Any]]:
    fn, args = item
    return fn(args)


def _counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        split = out.setdefault(r["split"], {})
        split[r["label"]] = split.get(r["label"], 0) + 1
    return {s: dict(sorted(c.items())) for s, c in sorted(out.items(), key=lambda kv: SPLITS.index(kv[0]))}


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(root: str | os.PathLike, profile: str = "small", seed: int = 0, tasks: Sequence[str] = TASKS,
          force: bool = False, jobs: int = 2, limit: int | None = None) -> dict[str, Any]:
    """Build (or reuse) the embedded benchmark under ``root``; returns the summary also kept in build_info.json.

    ``limit`` caps words / programs / files per class (for quick tests); the cache key includes it.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {TASKS}")
    root = Path(root)
    info_path = root / "build_info.json"
    info: dict[str, Any] = {}
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            info = {}
    key = {"profile": profile, "seed": seed, "version": VERSION, "limit": limit}
    if any(info.get(k) != v for k, v in key.items()):
        info = {}
    info.update(key)
    info.setdefault("tasks", {})
    t_all = time.time()
    for task in tasks:
        task_dir = root / task
        done = info["tasks"].get(task)
        if done and not force and (task_dir / "manifest.jsonl").exists():
            continue
        t0 = time.time()
        fn, classes = BUILDERS[task]
        if task_dir.exists():
            shutil.rmtree(task_dir)
        (task_dir / "clips").mkdir(parents=True)
        rows = fn(task_dir, profile, seed, jobs, limit)
        (task_dir / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
        write_manifest(rows, task_dir / "manifest.jsonl")
        info["tasks"][task] = {"clips": len(rows), "counts": _counts(rows), "bytes": _dir_size(task_dir),
                               "seconds": round(time.time() - t0, 1)}
        info["seconds"] = round(sum(t["seconds"] for t in info["tasks"].values()), 1)
        root.mkdir(parents=True, exist_ok=True)
        tmp = info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1) + "\n")
        os.replace(tmp, info_path)
    info["elapsed"] = round(time.time() - t_all, 1)
    return info


def format_counts(info: dict[str, Any]) -> str:
    """A table of class counts per split for each task."""
    lines = []
    for task, t in info["tasks"].items():
        splits = list(t["counts"])
        classes = sorted({c for s in t["counts"].values() for c in s}, key=lambda c: BUILDERS[task][1].index(c))
        w = max(len(c) for c in classes + ["class"]) + 2
        lines.append(f"\n[{task}] {t['clips']} clips, {t['bytes'] / 1e6:.1f} MB, {t['seconds']} s")
        lines.append("class".ljust(w) + "".join(s.rjust(14) for s in splits))
        for c in classes:
            lines.append(c.ljust(w) + "".join(str(t["counts"][s].get(c, 0)).rjust(14) for s in splits))
        lines.append("total".ljust(w) + "".join(str(sum(t["counts"][s].values())).rjust(14) for s in splits))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mosaic-alm data build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data/embedded-small", help="output folder")
    ap.add_argument("--profile", choices=PROFILES, default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        info = build(args.root, profile=args.profile, seed=args.seed, tasks=args.tasks, force=args.force,
                     jobs=args.jobs)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_counts({**info, "tasks": {t: info["tasks"][t] for t in args.tasks}}))
    print(f"\ntotal: {time.time() - t0:.1f} s (build seconds recorded: {info['seconds']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
