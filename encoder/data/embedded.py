"""Embedded offline benchmark: three labelled tasks built reproducibly from Debian packages.

* ``keywords``    -- 20 spoken words from espeak-ng, flite and festival (:mod:`encoder.data.keywords`).
* ``instruments`` -- single notes of GM programs rendered by fluidsynth (:mod:`encoder.data.instruments`).
* ``environment`` -- sound effects from Debian's ``0ad-data`` (:mod:`encoder.data.environment`).

Layout: ``{root}/{task}/clips/*.wav`` (16 kHz mono PCM16), ``{root}/{task}/manifest.jsonl``,
``{root}/{task}/classes.json``, ``{root}/build_info.json``. Deterministic for a seed: each item draws from its own
RNG derived from (seed, item key). The command line is ``mosaic-alm build-data`` (:mod:`recipes.build_data`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from encoder.data.environment import ENV_CLASSES, build_environment
from encoder.data.instruments import GM_FAMILIES, build_instruments
from encoder.data.keywords import KEYWORDS, build_keywords
from encoder.data.manifest import write_manifest
from encoder.data.sources import SR, BuildError, item_rng, loudness_db
from mosaic_core.io import atomic_write_text

# the task vocabularies and the helpers that derived data (mosaic_alm.instructions) takes from here
__all__ = ["build", "BuildError", "BUILDERS", "TASKS", "SPLITS", "PROFILES", "VERSION", "KEYWORDS", "GM_FAMILIES",
           "ENV_CLASSES", "SR", "item_rng", "loudness_db"]

VERSION = "1.3"
TASKS = ("keywords", "instruments", "environment")
SPLITS = ("train", "valid", "test", "test_xengine")
PROFILES = ("small", "full")
BUILDERS = {"keywords": (build_keywords, list(KEYWORDS)), "instruments": (build_instruments, list(GM_FAMILIES)),
            "environment": (build_environment, list(ENV_CLASSES))}  # task -> (builder, classes in label order)


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
        atomic_write_text(info_path, json.dumps(info, indent=1) + "\n")
    info["elapsed"] = round(time.time() - t_all, 1)
    return info
