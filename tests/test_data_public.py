"""Loaders for public benchmark formats, on tiny fixture files written in those formats."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from encoder.data.public import (
    SPEECH_COMMANDS_V1,
    SPEECH_COMMANDS_V2,
    DatasetFormatError,
    load_audiocaps,
    load_audioset,
    load_clotho,
    load_esc50,
    load_speech_commands,
)


def _wav(path, seconds=0.1):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.random.default_rng(0).normal(0, 0.1, int(16000 * seconds)).astype(np.float32), 16000)
    return path


def _csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_word_lists():
    assert len(SPEECH_COMMANDS_V1) == 30 and len(SPEECH_COMMANDS_V2) == 35


def test_audioset(tmp_path):
    labels = _csv(tmp_path / "class_labels_indices.csv", ["index", "mid", "display_name"],
                  [[0, "/m/09x0r", "Speech"], [1, "/m/05zppz", "Male speech, man speaking"], [2, "/m/0jbk", "Animal"]])
    _wav(tmp_path / "audio/a.wav")
    _wav(tmp_path / "audio/b.wav")
    doc = {"data": [{"wav": "audio/a.wav", "labels": "/m/09x0r,/m/05zppz"}, {"wav": str(tmp_path / "audio/b.wav"),
                                                                            "labels": "/m/0jbk"}]}
    (tmp_path / "balanced_train.json").write_text(json.dumps(doc))
    rows = load_audioset(tmp_path / "balanced_train.json", labels)
    assert rows[0]["labels"] == ["Speech", "Male speech, man speaking"] and rows[0]["label_indices"] == [0, 1]
    assert rows[1]["mids"] == ["/m/0jbk"] and rows[0]["split"] == "balanced_train"
    assert rows[0]["path"] == str(tmp_path / "audio/a.wav")
    doc["data"].append({"wav": "audio/a.wav", "labels": "/m/unknown"})
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetFormatError, match=r"data\[2\].*/m/unknown"):
        load_audioset(tmp_path / "bad.json", labels)
    (tmp_path / "missing.json").write_text(json.dumps({"data": [{"wav": "audio/zz.wav", "labels": "/m/0jbk"}]}))
    with pytest.raises(DatasetFormatError, match="audio file not found"):
        load_audioset(tmp_path / "missing.json", labels)
    bad_csv = _csv(tmp_path / "bad.csv", ["index", "mid"], [[0, "/m/09x0r"]])
    with pytest.raises(DatasetFormatError, match="missing column.*display_name"):
        load_audioset(tmp_path / "balanced_train.json", bad_csv)


def test_esc50(tmp_path):
    header = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    rows = []
    for fold in range(1, 6):
        for target, cat in ((0, "dog"), (1, "rooster")):
            name = f"{fold}-{100 + target}-A-{target}.wav"
            _wav(tmp_path / "audio" / name)
            rows.append([name, fold, target, cat, "True" if target == 0 else "False", 100 + target, "A"])
    _csv(tmp_path / "meta/esc50.csv", header, rows)
    out = load_esc50(tmp_path)
    assert len(out) == 10 and {r["fold"] for r in out} == {1, 2, 3, 4, 5}
    assert out[0]["label"] == "dog" and out[0]["esc10"] is True and out[1]["esc10"] is False
    (tmp_path / "audio" / rows[3][0]).unlink()
    with pytest.raises(DatasetFormatError, match=r"esc50.csv:5: audio file not found"):
        load_esc50(tmp_path)
    _csv(tmp_path / "meta/esc50.csv", header[:-1], [r[:-1] for r in rows])
    with pytest.raises(DatasetFormatError, match="missing column.*take"):
        load_esc50(tmp_path)


@pytest.mark.parametrize("version", [1, 2])
def test_speech_commands(tmp_path, version):
    words = ["yes", "no", "bed", "marvin"] + (["forward"] if version == 2 else [])
    for w in words:
        for spk in ("0a7c2a8d", "0b09edd3", "0c40e715"):
            _wav(tmp_path / w / f"{spk}_nohash_0.wav")
    _wav(tmp_path / "_background_noise_" / "white_noise.wav", 0.5)
    (tmp_path / "validation_list.txt").write_text("".join(f"{w}/0b09edd3_nohash_0.wav\n" for w in words))
    (tmp_path / "testing_list.txt").write_text("".join(f"{w}/0c40e715_nohash_0.wav\n" for w in words))
    rows = load_speech_commands(tmp_path, version=version)
    assert len(rows) == 3 * len(words)
    assert all("_background_noise_" not in r["path"] for r in rows)
    by_split = {s: {r["speaker"] for r in rows if r["split"] == s} for s in ("train", "valid", "test")}
    assert by_split == {"train": {"0a7c2a8d"}, "valid": {"0b09edd3"}, "test": {"0c40e715"}}
    twelve = load_speech_commands(tmp_path, version=version, twelve_class=True)
    assert {r["label"] for r in twelve} == {"yes", "no", "_unknown_"}
    if version == 1:
        _wav(tmp_path / "forward" / "x_nohash_0.wav")
        with pytest.raises(DatasetFormatError, match="forward"):
            load_speech_commands(tmp_path, version=1)
    (tmp_path / "testing_list.txt").unlink()
    with pytest.raises(DatasetFormatError, match="testing_list.txt"):
        load_speech_commands(tmp_path, version=version)


def test_clotho(tmp_path):
    header = ["file_name"] + [f"caption_{i}" for i in range(1, 6)]
    _wav(tmp_path / "development/rain on roof.wav")
    csv_path = _csv(tmp_path / "clotho_captions_development.csv", header,
                    [["rain on roof.wav"] + [f"rain falls {i}" for i in range(5)]])
    rows = load_clotho(csv_path, tmp_path / "development")
    assert rows[0]["captions"][4] == "rain falls 4" and rows[0]["split"] == "development"
    bad = _csv(tmp_path / "bad.csv", header[:4], [["rain on roof.wav", "a", "b", "c"]])
    with pytest.raises(DatasetFormatError, match="caption_4, caption_5"):
        load_clotho(bad, tmp_path / "development")


def test_audiocaps(tmp_path):
    _wav(tmp_path / "audio/abc123.wav")
    _wav(tmp_path / "audio/xyz789_30.wav")
    csv_path = _csv(tmp_path / "train.csv", ["audiocap_id", "youtube_id", "start_time", "caption"],
                    [[1, "abc123", 0, "a dog barks"], [2, "abc123", 0, "dog barking"], [3, "xyz789", 30, "wind"]])
    rows = load_audiocaps(csv_path, tmp_path / "audio")
    assert len(rows) == 2 and rows[0]["captions"] == ["a dog barks", "dog barking"]
    assert rows[1]["path"].endswith("xyz789_30.wav") and rows[1]["start_time"] == 30.0
    _csv(tmp_path / "val.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], [[4, "nope", 0, "x"]])
    with pytest.raises(DatasetFormatError, match=r"val.csv:2: audio file not found"):
        load_audiocaps(tmp_path / "val.csv", tmp_path / "audio")
