"""What made a result: git commit, library versions, machine. One home for every results file's provenance."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "transformers", "numpy", "scipy", "scikit-learn", "peft", "deepspeed", "sentence-transformers",
             "pycocoevalcap")


def library_versions(names=LIBRARIES) -> dict[str, str | None]:
    """Versions of python and the libraries that shape the numbers (``None`` when not installed), read from package
    metadata so nothing heavy is imported."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | os.PathLike = REPO_ROOT) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout holding ``path`` (read-only git calls)."""
    def run(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def machine_info() -> dict[str, Any]:
    """What a run's wall times depend on: ``{"cpu": model name (None if unknown), "cores": logical CPUs,
    "usable_cores": the CPUs this process may run on, "arch": platform.machine()}`` (read from /proc/cpuinfo and
    the scheduler; nothing is imported)."""
    cpu = None
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"cpu": cpu or platform.processor() or None, "cores": os.cpu_count(), "usable_cores": usable,
            "arch": platform.machine()}


def provenance() -> dict[str, Any]:
    """Commit, versions, machine (architecture; ``cpu``: :func:`machine_info`) and torch threads: the block a
    results JSON carries."""
    import torch

    return {**git_commit(), "versions": library_versions(), "machine": platform.machine(),
            "cpu": machine_info(), "threads": torch.get_num_threads()}
