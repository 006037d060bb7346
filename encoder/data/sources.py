"""What the embedded-benchmark task builders share: external tools, per-item RNGs, audio in and out, parallel work.

Every clip is 16 kHz mono PCM16. An item's randomness comes from :func:`item_rng` (seed + item key), so results do
not depend on worker count or order; :func:`parallel` returns rows sorted by id for the same reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf

SR = 16000
SILENCE_DB = -60.0  # clips (instruments) and segments (environment) quieter than this are dropped


class BuildError(RuntimeError):
    """A missing tool or download, named with the Debian package that provides it."""


def cache_dir() -> Path:
    """Download/extract cache: ``$MOSAIC_ALM_CACHE`` or ``~/.cache/mosaic-alm``."""
    return Path(os.environ.get("MOSAIC_ALM_CACHE", Path.home() / ".cache" / "mosaic-alm"))


def item_rng(seed: int, *key: Any) -> np.random.Generator:
    """An RNG that depends only on the seed and the item's key (independent of order and worker)."""
    digest = hashlib.sha256(repr((seed,) + key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def require(tool: str, package: str) -> str:
    """Path of ``tool``, or :class:`BuildError` naming the Debian package to install."""
    path = shutil.which(tool)
    if path is None:
        raise BuildError(f"'{tool}' not found: install the Debian package '{package}' (apt-get install {package})")
    return path


def run(cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
    """Run an external tool; a non-zero exit raises :class:`BuildError` with the last lines of its stderr."""
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


def load(path: str | Path) -> np.ndarray:
    """Decode an audio file to float32 mono at :data:`SR`."""
    audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
    return _to_mono16k(audio, sr)


def write_wav(path: Path, audio: np.ndarray) -> None:
    """Write ``audio`` (clipped to [-1, 1]) as a 16 kHz PCM16 wav, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0), SR, subtype="PCM_16")


def loudness_db(audio: np.ndarray) -> float:
    """RMS level in dBFS (floor -120)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return round(20 * np.log10(max(rms, 1e-6)), 2)


def trim(audio: np.ndarray, rel_db: float = -40.0, margin_s: float = 0.05) -> np.ndarray:
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


def parallel(work: list[tuple[Any, tuple]], jobs: int) -> list[dict[str, Any]]:
    """Run ``fn(args)`` for every ``(fn, args)`` (in ``jobs`` processes when > 1); all rows, sorted by id."""
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
