"""Loaders for public benchmarks in their own distribution formats.

Each loader returns manifest-style rows (``id``, ``path`` absolute, ``label`` or ``labels``, ``split`` and/or
``fold``, ``task``, captions where the benchmark has them). The data is never downloaded here: a user who has it
points a config (``configs/data/*.yaml``) at it. Errors name the file and what is wrong with it.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable

from encoder.data.manifest import ManifestError

SPEECH_COMMANDS_V1 = (
    "bed bird cat dog down eight five four go happy house left marvin nine no off on one right seven sheila six "
    "stop three tree two up wow yes zero"
).split()
SPEECH_COMMANDS_V2 = sorted(SPEECH_COMMANDS_V1 + ["backward", "follow", "forward", "learn", "visual"])
SPEECH_COMMANDS_12 = "yes no up down left right on off stop go".split()
UNKNOWN, SILENCE = "_unknown_", "_silence_"


class DatasetFormatError(ManifestError):
    """A public-benchmark file that does not have the expected layout (names the file and the problem)."""


def _read_csv(path: Path, required: Iterable[str], *, header: bool = True) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in fields]
        if missing:
            raise DatasetFormatError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(fields)})")
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def _check_audio(path: Path, source: Path, line: int) -> None:
    if not path.is_file():
        raise DatasetFormatError(f"{source}:{line}: audio file not found: {path}")


def load_audioset_labels(label_csv: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``class_labels_indices.csv`` (index, mid, display_name) ordered by index."""
    label_csv = Path(label_csv)
    rows = _read_csv(label_csv, ("index", "mid", "display_name"))
    out = [{"index": int(r["index"]), "mid": r["mid"], "display_name": r["display_name"]} for r in rows]
    out.sort(key=lambda r: r["index"])
    if [r["index"] for r in out] != list(range(len(out))):
        raise DatasetFormatError(f"{label_csv}: indices must run 0..{len(out) - 1} without gaps")
    return out


def load_audioset(
    json_path: str | os.PathLike, label_csv: str | os.PathLike, *, split: str | None = None, check_files: bool = True
) -> list[dict[str, Any]]:
    """AudioSet in the AST/SSAST JSON layout: ``{"data": [{"wav": path, "labels": "/m/09x0r,/m/05zppz"}]}``.

    Multi-label: rows carry ``labels`` (display names), ``mids`` and ``label_indices``; relative ``wav`` paths are
    resolved against the JSON file's folder.
    """
    json_path = Path(json_path)
    classes = load_audioset_labels(label_csv)
    by_mid = {c["mid"]: c for c in classes}
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetFormatError(f"{json_path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{json_path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DatasetFormatError(f'{json_path}: expected an object with a "data" list')
    split = split or json_path.stem
    rows = []
    for i, item in enumerate(doc["data"]):
        if not isinstance(item, dict) or "wav" not in item or "labels" not in item:
            raise DatasetFormatError(f'{json_path}: data[{i}] needs "wav" and "labels"')
        mids = [m.strip() for m in str(item["labels"]).split(",") if m.strip()]
        unknown = [m for m in mids if m not in by_mid]
        if unknown:
            raise DatasetFormatError(f"{json_path}: data[{i}] has label {unknown[0]!r} not in {label_csv}")
        wav = Path(item["wav"])
        wav = wav if wav.is_absolute() else json_path.parent / wav
        if check_files and not wav.is_file():
            raise DatasetFormatError(f"{json_path}: data[{i}] audio file not found: {wav}")
        rows.append({
            "id": item.get("video_id") or wav.stem,
            "path": str(wav),
            "labels": [by_mid[m]["display_name"] for m in mids],
            "mids": mids,
            "label_indices": [by_mid[m]["index"] for m in mids],
            "split": split,
            "task": "audioset",
        })
    return rows


def load_esc50(root: str | os.PathLike, *, check_files: bool = True) -> list[dict[str, Any]]:
    """ESC-50 as distributed: ``root/meta/esc50.csv`` and ``root/audio/*.wav``; ``fold`` is 1..5."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    cols = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
    rows = []
    for line, r in enumerate(_read_csv(meta, cols), start=2):
        try:
            fold, target = int(r["fold"]), int(r["target"])
        except ValueError:
            raise DatasetFormatError(f"{meta}:{line}: fold and target must be integers") from None
        if not 1 <= fold <= 5:
            raise DatasetFormatError(f"{meta}:{line}: fold {fold} outside 1..5")
        wav = root / "audio" / r["filename"]
        if check_files:
            _check_audio(wav, meta, line)
        rows.append({
            "id": Path(r["filename"]).stem,
            "path": str(wav),
            "label": r["category"],
            "target": target,
            "fold": fold,
            "split": f"fold{fold}",
            "esc10": r["esc10"].lower() == "true",
            "src_file": r["src_file"],
            "take": r["take"],
            "task": "esc50",
        })
    return rows


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file not found (Speech Commands needs validation_list.txt and "
                                 "testing_list.txt)")
    return {ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()}


def load_speech_commands(
    root: str | os.PathLike, version: int = 2, *, twelve_class: bool = False
) -> list[dict[str, Any]]:
    """Speech Commands v1 (30 words) / v2 (35 words): one folder per word plus the two list files.

    Clips named in ``validation_list.txt`` / ``testing_list.txt`` go to valid / test, the rest to train;
    ``_background_noise_`` is excluded. ``twelve_class=True`` maps other words to ``_unknown_`` (the 12-class
    setting; ``_silence_`` clips are not synthesised here).
    """
    if version not in (1, 2):
        raise ValueError(f"Speech Commands version must be 1 or 2, got {version}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: Speech Commands folder not found")
    valid, test = _read_list(root / "validation_list.txt"), _read_list(root / "testing_list.txt")
    words = SPEECH_COMMANDS_V1 if version == 1 else SPEECH_COMMANDS_V2
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    unexpected = [w for w in present if w not in words]
    if unexpected:
        raise DatasetFormatError(f"{root}: folder(s) {', '.join(unexpected)} are not Speech Commands v{version} words")
    rows = []
    for word in present:
        for wav in sorted((root / word).glob("*.wav")):
            rel = f"{word}/{wav.name}"
            split = "valid" if rel in valid else "test" if rel in test else "train"
            label = word if not twelve_class or word in SPEECH_COMMANDS_12 else UNKNOWN
            rows.append({
                "id": rel[:-4],
                "path": str(wav),
                "label": label,
                "word": word,
                "speaker": wav.name.split("_nohash_")[0],
                "split": split,
                "task": f"speech_commands_v{version}",
            })
    for listed, name in ((valid, "validation_list.txt"), (test, "testing_list.txt")):
        missing = sorted(r for r in listed if not (root / r).is_file())
        if missing:
            raise DatasetFormatError(f"{root / name}: {len(missing)} listed file(s) missing, e.g. {missing[0]}")
    return rows


def load_clotho(
    captions_csv: str | os.PathLike, audio_dir: str | os.PathLike, *, split: str | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Clotho caption CSV (``file_name, caption_1..caption_5``) with its audio folder."""
    captions_csv, audio_dir = Path(captions_csv), Path(audio_dir)
    cols = ("file_name",) + tuple(f"caption_{i}" for i in range(1, 6))
    split = split or captions_csv.stem.replace("clotho_captions_", "")
    rows = []
    for line, r in enumerate(_read_csv(captions_csv, cols), start=2):
        wav = audio_dir / r["file_name"]
        if check_files:
            _check_audio(wav, captions_csv, line)
        rows.append({
            "id": Path(r["file_name"]).stem,
            "path": str(wav),
            "captions": [r[f"caption_{i}"] for i in range(1, 6)],
            "split": split,
            "task": "clotho",
        })
    return rows


def load_audiocaps(
    csv_path: str | os.PathLike, audio_dir: str | os.PathLike, *, split: str | None = None,
    check_files: bool = True, ext: str = ".wav",
) -> list[dict[str, Any]]:
    """AudioCaps CSV (``audiocap_id, youtube_id, start_time, caption``); audio named ``{youtube_id}{ext}``
    (or ``{youtube_id}_{start_time}{ext}``). Captions of the same clip are grouped into one row."""
    csv_path, audio_dir = Path(csv_path), Path(audio_dir)
    split = split or csv_path.stem
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for line, r in enumerate(_read_csv(csv_path, ("audiocap_id", "youtube_id", "start_time", "caption")), start=2):
        key = (r["youtube_id"], r["start_time"])
        if key not in grouped:
            candidates = [audio_dir / f"{r['youtube_id']}{ext}",
                          audio_dir / f"{r['youtube_id']}_{r['start_time']}{ext}"]
            wav = next((c for c in candidates if c.is_file()), candidates[0])
            if check_files:
                _check_audio(wav, csv_path, line)
            grouped[key] = {
                "id": f"{r['youtube_id']}_{r['start_time']}",
                "path": str(wav),
                "youtube_id": r["youtube_id"],
                "start_time": float(r["start_time"]),
                "audiocap_ids": [],
                "captions": [],
                "split": split,
                "task": "audiocaps",
            }
        grouped[key]["audiocap_ids"].append(r["audiocap_id"])
        grouped[key]["captions"].append(r["caption"])
    return list(grouped.values())
