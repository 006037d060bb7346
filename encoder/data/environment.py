"""Task ``environment`` of the embedded benchmark: sound effects from Debian's ``0ad-data`` (CC-BY-SA-3.0).

16 classes named after their folder and file names. Fixed 2.5 s segments: a long file gives consecutive
non-overlapping segments (near-silent ones skipped), a short one is zero-padded at the end. Splits are made per
source file, so all segments of a file share one split.

The per-file ``test`` split is this task's cross-domain split; there is no ``test_xsource``. A held-out set of source
folders or recording families cannot cover the classes: crowd (5 files of ``amb_trade``), sawing (``con_saw``), rustle
(``leaves_``) and wood chopping (``lumber_tree_``) are one recording family each, sword, scream and pick are two (a
family held out would be a third to half of the class), and every class but footsteps lies in a single 0ad folder.
Test files of a class can share a recording family (a session) with train files, so the split is a weaker
cross-domain test than the held-out engine (keywords) and soundfont (instruments).

:func:`ensure_0ad_audio` fetches the package with apt and streams the effects out of its zip without unpacking the
1.4 GB archive.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from encoder.data.sources import (
    SILENCE_DB,
    SR,
    BuildError,
    cache_dir,
    item_rng,
    load,
    loudness_db,
    parallel,
    require,
    trim,
    write_wav,
)

log = logging.getLogger(__name__)

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
        require("apt-get", "apt")
        t0 = time.time()
        log.info(f"downloading {OAD_PACKAGE} (~1.4 GB) with apt-get download into {debs} ...")
        res = subprocess.run(["apt-get", "download", OAD_PACKAGE], cwd=debs, capture_output=True, text=True)
        found = sorted(debs.glob(f"{OAD_PACKAGE}_*_all.deb"))
        if res.returncode != 0 or not found:
            raise BuildError(f"'apt-get download {OAD_PACKAGE}' failed: {res.stderr.strip()[-300:]} "
                             f"(needs Debian's apt archive; or place the .deb in {debs})")
        log.info(f"downloaded in {time.time() - t0:.0f} s")
    require("dpkg-deb", "dpkg")
    tmp = Path(tempfile.mkdtemp(prefix=".0ad-", dir=cache))
    t0 = time.time()
    log.info(f"extracting 0ad audio from {found[-1].name} ...")
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
    log.info(f"extracted {n} files in {time.time() - t0:.0f} s")
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
        audio = load(Path(src) / s["source"])
        dur = audio.size / SR
        trimmed = trim(audio, rel_db=-50.0, margin_s=0.02) if audio.size < n else audio
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
            write_wav(out / rel, seg)
            rows.append({"id": rid, "path": rel, "label": s["label"], "split": s["split"], "task": "environment",
                         "class": s["label"], **s["sub"], "source": f"0ad-data/{s['source']}",
                         "source_duration": round(dur, 3), "offset": t0, "duration": SEGMENT_S,
                         "padded": bool(trimmed.size < n), "loudness": loudness_db(seg)})
    return rows


def build_environment(task_dir: Path, profile: str, seed: int, jobs: int, limit: int | None) -> list[dict[str, Any]]:
    """Cut the environment segments into ``task_dir/clips``; returns the manifest rows."""
    src = ensure_0ad_audio()
    specs = environment_specs(src, profile, seed, limit)
    k = max(1, jobs * 4)
    per = ENV_PROFILES[profile]["segments_per_file"]
    return parallel([(_segment_files, (specs[i::k], str(src), str(task_dir), per)) for i in range(k)], jobs)
