"""Embedded benchmark: splits disjoint, clips decode, labels backed by their source, determinism, cache, CLI."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import soundfile as sf

from encoder.data import embedded as E
from encoder.data import environment as ENV
from encoder.data import instruments as I
from encoder.data import keywords as K
from encoder.data.manifest import load_classes, read_manifest
from encoder.data.sources import SILENCE_DB, BuildError, require
from recipes.build_data import main as build_data

pytestmark = pytest.mark.data


def _task(root, task):
    classes = load_classes(root / task / "classes.json")
    return read_manifest(root / task / "manifest.jsonl", classes=classes), classes


def _by_split(rows, key):
    out: dict[str, set] = {}
    for r in rows:
        out.setdefault(r["split"], set()).add(r[key])
    return out


def _disjoint(groups: dict[str, set]):
    names = sorted(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not groups[a] & groups[b], (a, b, sorted(groups[a] & groups[b])[:5])


@pytest.mark.parametrize("task", E.TASKS)
def test_all_classes_in_train_and_test(embedded_root, task):
    rows, classes = _task(embedded_root, task)
    for split in ("train", "valid", "test"):
        assert {r["label"] for r in rows if r["split"] == split} == set(classes), split
    info = json.loads((embedded_root / "build_info.json").read_text())
    assert info["profile"] == "small" and info["seed"] == 0 and info["tasks"][task]["clips"] == len(rows)


@pytest.mark.parametrize("task, lengths", [("keywords", (0.1, K.KEYWORD_MAX_S)), ("instruments", (2.0, 2.0)),
                                           ("environment", (2.5, 2.5))])
def test_every_clip_decodes(embedded_root, task, lengths):
    rows, _ = _task(embedded_root, task)
    lo, hi = (int(round(x * 16000)) for x in lengths)
    for r in rows:
        info = sf.info(r["path"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), r["id"]
        audio, _ = sf.read(r["path"], dtype="float32")
        assert lo <= audio.size <= hi, (r["id"], audio.size)
        assert np.isfinite(audio).all() and np.abs(audio).max() > 1e-3, r["id"]
        assert abs(r["duration"] * 16000 - audio.size) <= 1


def test_keywords_speaker_disjoint_and_labels(embedded_root):
    rows, _ = _task(embedded_root, "keywords")
    _disjoint(_by_split(rows, "speaker"))
    for r in rows:
        assert r["label"] == r["word"] == r["text"]
        if r["engine"] == "espeak-ng":
            accent_voice, variant = r["voice"].split("+")
            assert K.ESPEAK_VARIANT_SPLIT[variant] == r["split"] and r["speaker"] == f"espeak-ng:{variant}"
            assert r["gender"] == ("female" if variant in K.ESPEAK_FEMALE else "male")
            assert r["accent"] == K.ESPEAK_ACCENTS[accent_voice]
            assert f"_{K.espeak_variant_id(variant)}_{r['word']}_" in r["id"]
        else:
            table = K.FLITE_VOICES if r["engine"] == "flite" else {k: v[1:] for k, v in K.FESTIVAL_VOICES.items()}
            assert (r["gender"], r["accent"]) == table[r["voice"]]
            assert r["split"] == {"flite": "train", "festival": "test_xengine"}[r["engine"]]
    engines = _by_split(rows, "engine")
    assert engines["test_xengine"] == {"festival"} and engines["train"] == {"espeak-ng", "flite"}
    assert engines["valid"] == engines["test"] == {"espeak-ng"}
    assert {r["voice"] for r in rows if r["split"] == "test_xengine"} == set(K.FESTIVAL_VOICES)
    assert not {"slt", "kal"} & {r["voice"] for r in rows if r["engine"] == "flite"}  # festival's speakers
    for split in ("train", "valid", "test"):  # both genders in every split
        assert {r["gender"] for r in rows if r["split"] == split} == {"male", "female"}, split


def test_keyword_variant_splits():
    """Every installed espeak-ng variant is used (or named as a duplicate); ~70/10/20 by variant, both genders."""
    assert set(K.ESPEAK_VARIANT_SPLIT) | set(K.ESPEAK_DUPLICATES) == K.installed_espeak_variants()
    assert not set(K.ESPEAK_VARIANT_SPLIT) & set(K.ESPEAK_DUPLICATES)
    n = {s: sum(v == s for v in K.ESPEAK_VARIANT_SPLIT.values()) for s in ("train", "valid", "test")}
    assert 0.6 < n["train"] / sum(n.values()) < 0.8 and n["valid"] >= 8 and n["test"] >= 16
    for split in n:
        variants = {v for v, s in K.ESPEAK_VARIANT_SPLIT.items() if s == split}
        assert variants & K.ESPEAK_FEMALE and variants - K.ESPEAK_FEMALE, split
    full = K.keyword_specs("full", 0)
    counts = {s: sum(x["split"] == s for x in full) for s in E.SPLITS}
    assert 2000 < counts["train"] < 3200 and 300 < counts["valid"] < 700 and 600 < counts["test"] < 1000
    assert counts["test_xengine"] >= 400
    assert {x["voice"].split("+")[1] for x in full if x["engine"] == "espeak-ng"} == set(K.ESPEAK_VARIANT_SPLIT)


def test_instruments_soundfont_disjoint_and_labels(embedded_root):
    rows, _ = _task(embedded_root, "instruments")
    fonts = _by_split(rows, "soundfont")
    assert fonts["test"] == {I.TEST_SOUNDFONT} and "OPL3_FM" in I.SOUNDFONTS
    assert fonts["train"] == fonts["valid"] == set(I.SOUNDFONTS) - {I.TEST_SOUNDFONT}
    assert I.TEST_SOUNDFONT not in fonts["train"] | fonts["valid"]
    programs = _by_split([r for r in rows if r["split"] != "test"], "program")
    assert not programs["train"] & programs["valid"]  # valid programs are unseen in train
    for r in rows:
        assert r["label"] == r["family"] == I.GM_FAMILIES[r["program"] // 8]
        assert r["program_name"] == I.GM_PROGRAMS[r["program"]]
        assert r["velocity"] == I.VELOCITIES[r["dynamics"]]
        assert r["id"] == f"{r['soundfont']}_p{r['program']:03d}_n{r['note']:03d}_v{r['velocity']:03d}"
        assert r["loudness"] >= SILENCE_DB


def test_environment_source_disjoint_and_labels(embedded_root):
    rows, _ = _task(embedded_root, "environment")
    _disjoint(_by_split(rows, "source"))
    for r in rows:
        cls, sub = ENV.env_label(r["source"].removeprefix("0ad-data/"))
        assert r["label"] == r["class"] == cls
        assert all(r[k] == v for k, v in sub.items())


@pytest.mark.parametrize("path, cls, sub", [
    ("audio/actor/singlesteps/fs_gravel3.ogg", "footsteps", {"surface": "gravel"}),
    ("audio/actor/human/movement/Footsteps/Foorstep_Sand_Running.ogg", "footsteps",
     {"surface": "sand", "gait": "running"}),
    ("audio/attack/impact/arrow_metal_07.ogg", "arrow impact", {"material": "metal"}),
    ("audio/resource/mining/mine_stone_02.ogg", "pick", {"material": "stone"}),
    ("audio/actor/fauna/death/goat_12.ogg", "farm animals", {"species": "goat"}),
    ("audio/actor/human/death/female_death_03.ogg", "scream", {"gender": "female"}),
    ("audio/ambient/weather/rain_11.ogg", "storm", {"weather": "rain"}),
    ("audio/attack/impact/shield_metal_01.ogg", None, None),
    ("audio/actor/human/death/death_11.ogg", None, None),
])
def test_env_label_rules(path, cls, sub):
    got = ENV.env_label(path)
    assert got == ((cls, sub) if cls else None)


def test_cache_hit_is_fast(embedded_root):
    t0 = time.time()
    info = E.build(embedded_root, profile="small", seed=0)
    assert time.time() - t0 < 2.0
    assert set(info["tasks"]) >= set(E.TASKS)


def test_specs_deterministic_and_seeded():
    assert K.keyword_specs("full", 3) == K.keyword_specs("full", 3)
    assert K.keyword_specs("full", 3) != K.keyword_specs("full", 4)
    assert I.instrument_specs("small", 1) == I.instrument_specs("small", 1)
    ranges = {**{p: I.FAMILY_RANGE[I.gm_family(p)] for p in range(128)}, **I.PROGRAM_RANGE}
    for s in I.instrument_specs("full", 0):
        assert ranges[s["program"]][0] <= s["note"] <= ranges[s["program"]][1]


def test_keyword_build_deterministic(tmp_path):
    a = E.build(tmp_path / "a", profile="small", seed=7, tasks=("keywords",), limit=2, jobs=1)
    b = E.build(tmp_path / "b", profile="small", seed=7, tasks=("keywords",), limit=2, jobs=2)
    ma = (tmp_path / "a/keywords/manifest.jsonl").read_text()
    assert ma == (tmp_path / "b/keywords/manifest.jsonl").read_text()
    assert a["tasks"]["keywords"]["counts"] == b["tasks"]["keywords"]["counts"]
    rows = read_manifest(tmp_path / "a/keywords/manifest.jsonl")
    for r in rows[:10]:
        x, _ = sf.read(r["path"])
        y, _ = sf.read(tmp_path / "b/keywords" / r["rel_path"])
        np.testing.assert_array_equal(x, y)
    assert {r["word"] for r in rows} == set(K.KEYWORDS[:2])


def test_missing_tool_names_package():
    with pytest.raises(BuildError, match="apt-get install some-pkg"):
        require("no-such-tool-xyz", "some-pkg")
    with pytest.raises(ValueError, match="profile"):
        E.build("/nonexistent", profile="huge")


def test_build_data_recipe_prints_counts_of_cached_build(embedded_corpus, embedded_root, capsys):
    # the corpus size of the embedded_corpus fixture (conftest.CORPUS_TEST_CLIPS), so the cached corpus is reused
    assert build_data(["--root", str(embedded_root), "--corpus-clips", "512"]) == 0
    out = capsys.readouterr().out
    assert "[unlabeled] 512 clips" in out and str(embedded_corpus) in out
    info = json.loads((embedded_root / "build_info.json").read_text())
    for task in E.TASKS:
        assert f"[{task}] {info['tasks'][task]['clips']} clips" in out
    counts = info["tasks"]["keywords"]["counts"]
    yes_row = next(line.split() for line in out.splitlines() if line.startswith("yes "))
    assert yes_row == ["yes"] + [str(counts[s].get("yes", 0)) for s in counts]


def test_build_data_recipe_reports_missing_tool(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
    assert build_data(["--root", str(tmp_path / "data"), "--tasks", "instruments"]) == 1
    assert "apt-get install fluidsynth" in capsys.readouterr().err
