"""Task ``instruments`` of the embedded benchmark: single notes of GM programs rendered by fluidsynth.

Reverb/chorus off; soundfonts FluidR3_GM, TimGM6mb, OPL3_FM (an OPL3 FM-chip simulation: synthesised, not
sampled) and MuseScore_General; 2.0 s clips (note on 1.5 s, release kept). MuseScore_General is the held-out
soundfont (the test split, the task's cross-domain split); valid holds out one program per GM family (the other
fonts), so valid instruments are unseen in train. Silent renders (RMS below -60 dBFS) are dropped.

Debian bookworm's other GM soundfonts are not distinct: fluid-soundfont-gs has FluidR3_GM's samples,
fluidr3mono-gm-soundfont is the mono FluidR3 that MuseScore_General was made from (it would leak the test font), and
csound-soundfont's sf_GMbank shares 240 of its 373 samples byte for byte with TimGM6mb. MuseScore_General descends
from FluidR3 too, so FluidR3_GM is the train font closest to the test font.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from encoder.data.sources import (
    SILENCE_DB,
    SR,
    BuildError,
    item_rng,
    load,
    loudness_db,
    parallel,
    require,
    run,
    write_wav,
)

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
    "OPL3_FM": ("/usr/share/sounds/sf2/OPL-3_FM_128M.sf2", "opl3-soundfont"),
    "MuseScore_General": ("/usr/share/sounds/sf3/MuseScore_General.sf3", "musescore-general-soundfont-small"),
}
TEST_SOUNDFONT = "MuseScore_General"
VELOCITIES = {"soft": 45, "loud": 110}
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
INSTRUMENT_PROFILES = {"small": {"programs_per_family": 2, "pitches": 2},
                       "full": {"programs_per_family": 8, "pitches": 4}}
NOTE_ON_S, CLIP_S, SLOT_S = 1.5, 2.0, 2.2


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
        run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r", str(SR), "-F", str(wav),
              SOUNDFONTS[font][0], str(midi)])
        audio = load(wav)
    slot, n = int(SLOT_S * SR), int(CLIP_S * SR)
    for i, s in enumerate(specs):
        clip = audio[i * slot: i * slot + n]
        clip = np.pad(clip, (0, n - clip.size))
        level = loudness_db(clip)
        if level < SILENCE_DB or not np.isfinite(clip).all():
            continue
        rel = f"clips/{s['id']}.wav"
        write_wav(out / rel, clip)
        prog = s["program"]
        rows.append({"id": s["id"], "path": rel, "label": gm_family(prog), "split": s["split"], "task": "instruments",
                     "family": gm_family(prog), "program": prog, "program_name": GM_PROGRAMS[prog],
                     "note": s["note"], "note_name": note_name(s["note"]),
                     "pitch_hz": round(440.0 * 2 ** ((s["note"] - 69) / 12), 2), "velocity": s["velocity"],
                     "dynamics": s["dynamics"], "soundfont": font, "loudness": level, "duration": CLIP_S})
    return rows


def build_instruments(task_dir: Path, profile: str, seed: int, jobs: int, limit: int | None) -> list[dict[str, Any]]:
    """Render the instrument notes into ``task_dir/clips``; returns the manifest rows."""
    require("fluidsynth", "fluidsynth")
    for path, pkg in SOUNDFONTS.values():
        if not Path(path).exists():
            raise BuildError(f"soundfont {path} not found: install the Debian package '{pkg}'")
    specs = instrument_specs(profile, seed, limit)
    work = []
    for font in SOUNDFONTS:
        fs = [s for s in specs if s["soundfont"] == font]
        n = max(1, min(len(fs) // 64, 2 * jobs)) if font != TEST_SOUNDFONT else max(1, min(len(fs) // 256, jobs))
        work += [(_render_batch, (font, fs[i::n], str(task_dir))) for i in range(n)]
    return parallel(work, jobs)
