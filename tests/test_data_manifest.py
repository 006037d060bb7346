"""Manifest I/O: round trip, path resolution, and ManifestError naming file and line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from encoder.data.manifest import ManifestError, load_classes, read_manifest, write_manifest


def _wav(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(1600, dtype=np.float32), 16000, subtype="PCM_16")


def _rows(n=3):
    return [{"id": f"c{i}", "path": f"clips/c{i}.wav", "label": "yes" if i % 2 else "no", "split": "train",
             "task": "t", "speaker": f"s{i}"} for i in range(n)]


def test_round_trip_resolves_paths(tmp_path):
    for r in _rows():
        _wav(tmp_path / r["path"])
    m = write_manifest(_rows(), tmp_path / "manifest.jsonl")
    rows = read_manifest(m, classes=["yes", "no"])
    assert [r["id"] for r in rows] == ["c0", "c1", "c2"]
    assert rows[0]["path"] == str((tmp_path / "clips/c0.wav").resolve())
    assert rows[0]["rel_path"] == "clips/c0.wav" and rows[0]["speaker"] == "s0"
    write_manifest(rows, tmp_path / "again.jsonl")  # rel_path goes back into path
    assert (tmp_path / "again.jsonl").read_text() == m.read_text()
    assert not list(tmp_path.glob(".*.tmp"))


def test_absolute_paths_and_no_file_check(tmp_path):
    _wav(tmp_path / "a.wav")
    write_manifest([{"id": "a", "path": str(tmp_path / "a.wav"), "label": "x", "split": "test", "task": "t"},
                    {"id": "b", "path": "missing.wav", "label": "x", "split": "test", "task": "t"}],
                   tmp_path / "m.jsonl")
    rows = read_manifest(tmp_path / "m.jsonl", check_files=False)
    assert rows[0]["path"] == str(tmp_path / "a.wav")


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("bad_line, needle", [
    ('{"id": "x", "path": "clips/c0.wav", "label": "no", ', "malformed JSON"),
    ('{"id": "x", "path": "clips/c0.wav", "label": "no", "task": "t"}', "missing required field(s) split"),
    ('{"id": "x", "path": "clips/nothere.wav", "label": "no", "split": "train", "task": "t"}', "audio file not found"),
    ('{"id": "x", "path": "clips/c0.wav", "label": "maybe", "split": "train", "task": "t"}', "unknown label 'maybe'"),
    ('{"id": "c0", "path": "clips/c0.wav", "label": "no", "split": "train", "task": "t"}', "duplicated id 'c0'"),
    ('[1, 2]', "expected a JSON object"),
])
def test_errors_name_file_and_line(tmp_path, bad_line, needle):
    _wav(tmp_path / "clips/c0.wav")
    good = json.dumps(_rows(1)[0])
    m = _write_lines(tmp_path / "m.jsonl", [good, "", bad_line])
    with pytest.raises(ManifestError) as e:
        read_manifest(m, classes=["yes", "no"])
    assert f"{m}:3:" in str(e.value) and needle in str(e.value)
    assert isinstance(e.value, ValueError)


def test_missing_manifest_and_classes(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "classes.json").write_text('["a", "b"]')
    assert load_classes(tmp_path / "classes.json") == ["a", "b"]
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(ManifestError, match="bad.json"):
        load_classes(tmp_path / "bad.json")
