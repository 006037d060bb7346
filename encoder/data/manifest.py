"""Manifest I/O shared by the whole kit.

A manifest is a JSON-lines file: one object per clip with at least ``id`` (unique), ``path`` (relative to the
manifest's folder, or absolute), ``label``, ``split`` and ``task``, plus free-form metadata. Rows returned by
:func:`read_manifest` carry ``path`` resolved to an absolute path and the stored value under ``rel_path``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from mosaic_core.io import atomic_write_text

REQUIRED_FIELDS: tuple[str, ...] = ("id", "path", "label", "split", "task")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and, where relevant, the line."""


def write_manifest(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write ``rows`` as JSON lines to ``path`` atomically (temporary file + ``os.replace``).

    Rows are written as given except that a ``rel_path`` key (added by :func:`read_manifest`) replaces ``path``.
    """
    lines = []
    for row in rows:
        row = dict(row)
        if "rel_path" in row:
            row["path"] = row.pop("rel_path")
        lines.append(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
    return atomic_write_text(path, "".join(lines))


def read_manifest(
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    check_files: bool = True,
    required: Sequence[str] = REQUIRED_FIELDS,
) -> list[dict[str, Any]]:
    """Read and validate a JSON-lines manifest.

    Raises :class:`ManifestError` naming the manifest and line number for a malformed line, a missing required
    field, a missing audio file (when ``check_files``), a label outside ``classes`` (when given) or a repeated id.
    Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base = path.parent.resolve()
    known = set(classes) if classes is not None else None
    seen: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ManifestError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{where}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise ManifestError(f"{where}: missing required field(s) {', '.join(missing)}")
            rid = str(row["id"])
            if rid in seen:
                raise ManifestError(f"{where}: duplicated id {rid!r} (first on line {seen[rid]})")
            seen[rid] = lineno
            if known is not None:
                labels = row["label"] if isinstance(row["label"], list) else [row["label"]]
                bad = [lab for lab in labels if not isinstance(lab, str) or lab not in known]
                if bad:
                    raise ManifestError(f"{where}: unknown label {bad[0]!r} (not among {len(known)} classes)")
            rel = str(row["path"])
            full = Path(rel) if os.path.isabs(rel) else base / rel
            if check_files and not full.is_file():
                raise ManifestError(f"{where}: audio file not found: {full}")
            row["rel_path"] = rel
            row["path"] = str(full)
            rows.append(row)
    return rows


def load_classes(path: str | os.PathLike) -> list[str]:
    """Read an ordered class list (``classes.json``: a JSON list of strings)."""
    path = Path(path)
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: cannot read class list ({e})") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ManifestError(f"{path}: class list must be a JSON list of strings")
    return classes
