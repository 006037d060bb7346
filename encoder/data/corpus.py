"""The unlabeled pretraining corpus of the embedded benchmark: speech, music and recorded effects from the same Debian
sources as the labelled tasks, never from a held-out voice, soundfont, program or recording, written as WebDataset
shards (:mod:`encoder.data.shards`).

What it holds (fractions of the clips, :data:`MIX`):

* ``speech`` -- phrases of one to three words (the dictionary of Debian's ``festlex-cmu``, the 20 keywords among
  them now and then) said by every *train* espeak-ng variant in every accent at random rates and pitches, and by
  flite's train speakers ``rms`` and ``awb``. espeak-ng renders a chunk's phrases in one call, separated by
  500 ms breaks, and the output is cut at its silences; flite says one phrase a call. Never festival (the held-out
  engine), flite's ``slt`` / ``kal``, or a valid / test espeak-ng variant.
* ``music`` -- melodies, chords, a melody over chords, drum patterns and drums under a melody, rendered by
  fluidsynth from the train soundfonts (FluidR3_GM, TimGM6mb, OPL3_FM; never MuseScore_General) with every GM
  program except the ones the instruments task holds out for its valid split.
* ``effects`` -- 2.5 s windows at random offsets of 0ad's recorded effects, any file that is not in the environment
  task's valid or test split (in either data profile), at a random gain; ``mixtures`` -- two such windows of
  different files summed at a random level difference.

Deterministic for a seed: chunk ``c`` of a kind draws everything from :func:`~encoder.data.sources.item_rng`
(seed, "corpus", kind, c), the clips of every kind are cut to their share in id order and dealt into shards in a
seeded order (so a batch mixes kinds). Layout: ``{root}/unlabeled/shard-*.tar`` + ``index.json`` (WebDataset) and
``corpus.json`` (its size, kinds, sources, seconds). A folder built with the same seed and version and at least the
clips asked for is reused. The command line is ``mosaic-alm build-data --corpus-clips N``.
"""
from __future__ import annotations

import functools
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from encoder.data.environment import ensure_0ad_audio, environment_specs
from encoder.data.instruments import (
    FAMILY_RANGE,
    PROGRAM_RANGE,
    SOUNDFONTS,
    TEST_SOUNDFONT,
    _valid_programs,
    gm_family,
)
from encoder.data.keywords import ESPEAK_ACCENTS, ESPEAK_VARIANT_SPLIT, FLITE_F0, FLITE_VOICES, KEYWORDS
from encoder.data.shards import write_shards
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
    trim,
    write_wav,
)
from mosaic_core.io import atomic_write_text

CORPUS_VERSION = "1"
CORPUS_DIR = "unlabeled"
CORPUS_PROFILES = {"small": 3000, "full": 60000}  # clips; full: 10x the 5,988 labelled training clips
MIX = {"speech": 0.40, "music": 0.35, "effects": 0.15, "mixtures": 0.10}
CHUNK = {"speech": 48, "music": 64, "effects": 192, "mixtures": 192}  # clips a worker call makes
SLACK = 1.06  # kinds are rendered with this much to spare (espeak-ng phrases that merge, silent renders) ...
SHARD_SIZE = 1000  # ... and cut to their share
DICTIONARY = "/usr/share/festival/dicts/cmu/cmudict-0.4.out"  # Debian festlex-cmu
SPEECH_MAX_S, MUSIC_S, SLOT_S, EFFECT_S = 2.0, 2.0, 2.3, 2.5
TRAIN_FONTS = tuple(f for f in SOUNDFONTS if f != TEST_SOUNDFONT)
TRAIN_VARIANTS = tuple(v for v, s in ESPEAK_VARIANT_SPLIT.items() if s == "train")
FLITE_SHARE = 0.08  # of the speech chunks


def corpus_dir(root: str | Path) -> Path:
    return Path(root) / CORPUS_DIR


# ------------------------------------------------------------------------------------------------------ speech
@functools.lru_cache(maxsize=1)
def dictionary_words(path: str = DICTIONARY) -> list[str]:
    """Plain alphabetic words of 2-12 letters from the CMU dictionary Debian's festlex-cmu ships."""
    if not Path(path).exists():
        raise BuildError(f"{path} not found: install the Debian package 'festlex-cmu'")
    words = set()
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.startswith('("'):
                w = line[2:line.index('"', 2)]
                if w.isalpha() and w.isascii() and 2 <= len(w) <= 12:
                    words.add(w)
    return sorted(words)


def _phrases(rng: np.random.Generator, words: list[str], n: int) -> list[str]:
    out = []
    for _ in range(n):
        k = int(rng.choice([1, 1, 2, 2, 3]))
        out.append(" ".join(KEYWORDS[rng.integers(len(KEYWORDS))] if rng.random() < 0.1
                            else words[rng.integers(len(words))] for _ in range(k)))
    return out


def _voiced_segments(audio: np.ndarray, gap_s: float = 0.25, rel_db: float = -45.0) -> list[np.ndarray]:
    """Parts of ``audio`` separated by at least ``gap_s`` of frames ``rel_db`` below its loudest 10 ms frame."""
    hop = SR // 100
    n = audio.size // hop
    if n == 0:
        return []
    level = 10 * np.log10(np.mean(audio[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1) + 1e-12)
    if level.max() < SILENCE_DB:
        return []
    active = np.flatnonzero(level > level.max() + rel_db)
    if active.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(active) > gap_s * 100)
    starts = np.concatenate([[active[0]], active[breaks + 1]])
    ends = np.concatenate([active[breaks], [active[-1]]]) + 1
    m = SR // 20  # 50 ms margins
    return [audio[max(0, s * hop - m): min(audio.size, e * hop + m)] for s, e in zip(starts, ends)]


def _speech_chunk(args: tuple[int, int, int, str]) -> list[dict[str, Any]]:
    seed, chunk, n, out_dir = args
    words = dictionary_words()
    rng = item_rng(seed, "corpus", "speech", chunk)
    flite = rng.random() < FLITE_SHARE
    speed, pitch = float(rng.uniform(0.7, 1.4)), float(rng.uniform(0.5, 1.5))
    phrases = _phrases(rng, words, n)
    clips: list[tuple[np.ndarray, str | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        if flite:
            voice = sorted(FLITE_VOICES)[int(rng.integers(len(FLITE_VOICES)))]
            for p in phrases:
                run(["flite", "-voice", voice, "--setf", f"duration_stretch={1 / speed:.4f}",
                     "--setf", f"int_f0_target_mean={FLITE_F0[voice] * pitch:.1f}", "-t", p, "-o", str(wav)])
                clips.append((trim(load(wav)), p))
            meta = {"engine": "flite", "voice": voice, "speaker": f"flite:{voice}"}
        else:
            variant = TRAIN_VARIANTS[int(rng.integers(len(TRAIN_VARIANTS)))]
            accent = sorted(ESPEAK_ACCENTS)[int(rng.integers(len(ESPEAK_ACCENTS)))]
            text = " ".join(f"{p} <break time='500ms'/>" for p in phrases)
            run(["espeak-ng", "-m", "-v", f"{accent}+{variant}", "-s", str(int(round(175 * speed))),
                 "-p", str(int(round(50 * pitch))), "-w", str(wav), text])
            segs = _voiced_segments(load(wav))
            texts = phrases if len(segs) == len(phrases) else [None] * len(segs)  # merged / split: no text
            clips = list(zip(segs, texts))
            meta = {"engine": "espeak-ng", "voice": f"{accent}+{variant}", "speaker": f"espeak-ng:{variant}",
                    "accent": ESPEAK_ACCENTS[accent]}
    rows = []
    for i, (audio, text) in enumerate(clips):
        if audio.size < int(0.1 * SR):
            continue
        audio = audio[: int(SPEECH_MAX_S * SR)]
        audio = float(rng.uniform(0.3, 0.9)) * audio / max(float(np.abs(audio).max()), 1e-6)
        rows.append(_row(out_dir, f"speech_{chunk:05d}_{i:03d}", audio, "speech",
                         {**meta, "speed": round(speed, 3), "pitch": round(pitch, 3),
                          **({"text": text} if text else {})}))
    return rows


# ------------------------------------------------------------------------------------------------------- music
def train_programs(seed: int) -> list[int]:
    """GM programs the instruments task never holds out (every program but its valid ones)."""
    held = _valid_programs(seed)
    return [p for p in range(128) if p not in held]


def _note_range(program: int) -> tuple[int, int]:
    return PROGRAM_RANGE.get(program, FAMILY_RANGE[gm_family(program)])


def _slot_events(rng: np.random.Generator, programs: list[int], tps: int) -> tuple[str, list, dict]:
    """One 2.0 s musical event: (style, [(time_ticks, message kwargs)], metadata)."""
    style = str(rng.choice(["melody", "chords", "melody_chords", "drums", "drums_melody"]))
    ev: list[tuple[int, dict]] = []
    meta: dict[str, Any] = {"style": style}
    end = int(1.8 * tps)

    def melody(ch: int):
        prog = programs[int(rng.integers(len(programs)))]
        lo, hi = _note_range(prog)
        ev.append((0, {"type": "program_change", "program": prog, "channel": ch}))
        root = int(rng.integers(lo, max(lo + 1, hi - 7)))
        scale = [0, 2, 4, 5, 7, 9, 11, 12] if rng.random() < 0.6 else [0, 3, 5, 7, 10, 12]
        t, vel = 0, int(rng.integers(50, 120))
        while t < end:
            dur = int(tps * float(rng.choice([0.125, 0.25, 0.25, 0.375, 0.5])))
            note = int(np.clip(root + scale[int(rng.integers(len(scale)))], lo, hi))
            ev.extend([(t, {"type": "note_on", "note": note, "velocity": vel, "channel": ch}),
                   (min(t + dur, end), {"type": "note_off", "note": note, "velocity": 0, "channel": ch})])
            t += dur
        meta.setdefault("programs", []).append(prog)

    def chords(ch: int):
        prog = programs[int(rng.integers(len(programs)))]
        lo, hi = _note_range(prog)
        ev.append((0, {"type": "program_change", "program": prog, "channel": ch}))
        t, vel = 0, int(rng.integers(40, 100))
        while t < end:
            dur = int(tps * float(rng.choice([0.5, 1.0, 2.0])))
            root = int(rng.integers(lo, max(lo + 1, hi - 7)))
            for iv in ([0, 4, 7] if rng.random() < 0.5 else [0, 3, 7, 10]):
                note = min(root + iv, 127)
                ev.extend([(t, {"type": "note_on", "note": note, "velocity": vel, "channel": ch}),
                       (min(t + dur, end), {"type": "note_off", "note": note, "velocity": 0, "channel": ch})])
            t += dur
        meta.setdefault("programs", []).append(prog)

    def drums():
        kit = [int(x) for x in rng.choice(np.arange(35, 82), size=int(rng.integers(2, 5)), replace=False)]
        step = int(tps * float(rng.choice([0.125, 0.25])))
        for t in range(0, end, step):
            for note in kit:
                if rng.random() < 0.4:
                    ev.append((t, {"type": "note_on", "note": note, "velocity": int(rng.integers(60, 127)),
                                   "channel": 9}))
                    ev.append((t + step // 2, {"type": "note_off", "note": note, "velocity": 0, "channel": 9}))
        meta["drums"] = kit

    if style in ("melody", "melody_chords", "drums_melody"):
        melody(0)
    if style in ("chords", "melody_chords"):
        chords(1)
    if style in ("drums", "drums_melody"):
        drums()
    return style, ev, meta


def _music_chunk(args: tuple[int, int, int, str, list[int]]) -> list[dict[str, Any]]:
    """One soundfont, ``n`` slots of 2.3 s in one fluidsynth run, cut into 2.0 s clips."""
    import mido

    seed, chunk, n, out_dir, programs = args
    rng = item_rng(seed, "corpus", "music", chunk)
    font = TRAIN_FONTS[int(rng.integers(len(TRAIN_FONTS)))]
    tpb, tps = 480, 960
    mid = mido.MidiFile(ticks_per_beat=tpb)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))
    metas, now = [], 0
    for i in range(n):
        _, ev, meta = _slot_events(rng, programs, tps)
        base = int(i * SLOT_S * tps)
        for t, msg in sorted(ev, key=lambda e: (e[0], e[1]["type"] != "program_change")):
            kw = {k: v for k, v in msg.items() if k != "type"}
            track.append(mido.Message(msg["type"], time=base + t - now, **kw))
            now = base + t
        for ch in (0, 1, 9):  # all sound off before the next slot
            track.append(mido.Message("control_change", control=120, value=0, channel=ch,
                                      time=max(0, base + int(MUSIC_S * tps) - now)))
            now = max(now, base + int(MUSIC_S * tps))
        metas.append(meta)
    track.append(mido.MetaMessage("end_of_track", time=int(n * SLOT_S * tps) - now))
    with tempfile.TemporaryDirectory() as tmp:
        midi, wav = Path(tmp) / "m.mid", Path(tmp) / "m.wav"
        mid.save(str(midi))
        run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r", str(SR), "-F", str(wav),
             SOUNDFONTS[font][0], str(midi)])
        audio = load(wav)
    rows = []
    slot, clip_n = int(SLOT_S * SR), int(MUSIC_S * SR)
    for i, meta in enumerate(metas):
        clip = audio[i * slot: i * slot + clip_n]
        clip = np.pad(clip, (0, clip_n - clip.size))
        if loudness_db(clip) < SILENCE_DB or not np.isfinite(clip).all():
            continue
        rows.append(_row(out_dir, f"music_{chunk:05d}_{i:03d}", clip, "music", {"soundfont": font, **meta}))
    return rows


# ----------------------------------------------------------------------------------------------------- effects
def effect_sources(src: Path, seed: int) -> list[str]:
    """0ad effect files (relative paths) the corpus may use: all but the environment task's valid and test files
    (of either data profile)."""
    held = {s["source"] for profile in ("small", "full") for s in environment_specs(src, profile, seed)
            if s["split"] != "train"}
    return [f.relative_to(src).as_posix() for f in sorted(src.rglob("*.ogg"))
            if f.relative_to(src).as_posix() not in held]


def _window(rng: np.random.Generator, audio: np.ndarray) -> np.ndarray | None:
    n = int(EFFECT_S * SR)
    if audio.size <= n:
        clip = trim(audio, rel_db=-50.0, margin_s=0.02)
        if clip.size < int(0.1 * SR):
            return None
        start = int(rng.integers(0, n - clip.size + 1))
        return np.pad(clip, (start, n - clip.size - start))
    for _ in range(4):  # a non-silent window
        off = int(rng.integers(0, audio.size - n + 1))
        clip = audio[off:off + n]
        if loudness_db(clip) > SILENCE_DB:
            return clip
    return None


def _effects_chunk(args: tuple[int, int, int, str, str, list[str], str]) -> list[dict[str, Any]]:
    seed, chunk, n, out_dir, src, files, kind = args
    rng = item_rng(seed, "corpus", kind, chunk)
    pick = [files[int(i)] for i in rng.choice(len(files), size=min(len(files), 24), replace=False)]
    audio = {f: load(Path(src) / f) for f in pick}
    rows = []
    for i in range(n):
        a = pick[int(rng.integers(len(pick)))]
        clip = _window(rng, audio[a])
        if clip is None:
            continue
        meta: dict[str, Any] = {"sources": [f"0ad-data/{a}"]}
        clip = clip / max(float(np.abs(clip).max()), 1e-6)
        if kind == "mixtures":
            b = next((f for f in rng.permutation(pick) if f != a), None)
            other = _window(rng, audio[b]) if b else None
            if other is None:
                continue
            db = float(rng.uniform(-6.0, 6.0))
            clip = clip + 10 ** (-db / 20) * other / max(float(np.abs(other).max()), 1e-6)
            meta = {"sources": [f"0ad-data/{a}", f"0ad-data/{b}"], "level_difference_db": round(db, 2)}
        clip = float(rng.uniform(0.2, 0.9)) * clip / max(float(np.abs(clip).max()), 1e-6)
        rows.append(_row(out_dir, f"{kind}_{chunk:05d}_{i:03d}", clip, kind, meta))
    return rows


# ------------------------------------------------------------------------------------------------------- build
def _row(out_dir: str, rid: str, audio: np.ndarray, kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    path = Path(out_dir) / f"{rid}.wav"
    write_wav(path, audio)
    return {"id": rid, "path": str(path), "kind": kind, "task": "unlabeled", "split": "train",
            "duration": round(audio.size / SR, 3), "loudness": loudness_db(audio), **meta}


def kind_counts(clips: int) -> dict[str, int]:
    """Clips per kind for a corpus of ``clips`` (the shares of :data:`MIX`, the rest to speech)."""
    counts = {k: int(clips * share) for k, share in MIX.items()}
    counts["speech"] += clips - sum(counts.values())
    return counts


def read_corpus_info(root: str | Path) -> dict[str, Any] | None:
    path = corpus_dir(root) / "corpus.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def build_corpus(root: str | Path, clips: int, seed: int = 0, jobs: int = 2, force: bool = False) -> dict[str, Any]:
    """Build (or reuse) ``{root}/unlabeled``: ``clips`` unlabeled clips as WebDataset shards; returns corpus.json."""
    if clips < 1:
        raise ValueError(f"a corpus needs at least one clip, got {clips}")
    out = corpus_dir(root)
    info = read_corpus_info(root)
    if (not force and info and info.get("seed") == seed and info.get("version") == CORPUS_VERSION
            and info.get("clips", 0) >= clips and (out / "index.json").exists()):
        return info
    for tool, pkg in (("espeak-ng", "espeak-ng"), ("flite", "flite"), ("fluidsynth", "fluidsynth")):
        require(tool, pkg)
    for font in TRAIN_FONTS:
        if not Path(SOUNDFONTS[font][0]).exists():
            raise BuildError(f"soundfont {SOUNDFONTS[font][0]} not found: install '{SOUNDFONTS[font][1]}'")
    t0 = time.time()
    src = ensure_0ad_audio()
    files, words, programs = effect_sources(src, seed), dictionary_words(), train_programs(seed)
    want = kind_counts(clips)
    if out.exists():
        shutil.rmtree(out)
    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".corpus-", dir=Path(root)))
    try:
        work: list[tuple[Any, tuple]] = []
        for kind, n in want.items():
            size = CHUNK[kind]
            for c in range(int(np.ceil(n * SLACK / size))):
                if kind == "speech":
                    work.append((_speech_chunk, (seed, c, size, str(tmp))))
                elif kind == "music":
                    work.append((_music_chunk, (seed, c, size, str(tmp), programs)))
                else:
                    work.append((_effects_chunk, (seed, c, size, str(tmp), str(src), files, kind)))
        rows = parallel(work, jobs)
        t_render = time.time() - t0
        keep = []
        for kind, n in want.items():
            got = [r for r in rows if r["kind"] == kind]
            if len(got) < n:
                raise BuildError(f"the corpus rendered {len(got)} {kind} clips, fewer than the {n} asked for")
            keep += got[:n]
        order = item_rng(seed, "corpus", "shard_order").permutation(len(keep))
        index = write_shards([keep[i] for i in order], out, shard_size=SHARD_SIZE, overwrite=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if index["skipped"]:
        raise BuildError(f"{len(index['skipped'])} corpus clips could not be written: {index['skipped'][0]}")
    info = {"version": CORPUS_VERSION, "seed": seed, "clips": index["num_clips"], "kinds": want,
            "hours": round(sum(r["duration"] for r in keep) / 3600, 2), "shards": len(index["shards"]),
            "bytes": sum(s["bytes"] for s in index["shards"]),
            "sources": {"speech_voices": len(TRAIN_VARIANTS) + len(FLITE_VOICES), "dictionary_words": len(words),
                        "soundfonts": list(TRAIN_FONTS), "programs": len(programs), "effect_files": len(files)},
            "seconds": {"render": round(t_render, 1), "total": round(time.time() - t0, 1)}}
    atomic_write_text(out / "corpus.json", json.dumps(info, indent=1) + "\n")
    return info
