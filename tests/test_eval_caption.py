"""Captioning metrics: pycocoevalcap's CIDEr is CIDEr-D (checked by hand), and the full pipeline through Java."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest

from eval.caption_metrics import CaptionScorer, caption_scores, cider_d, spice_status

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java is not on PATH (PTB tokenizer, METEOR)")

REFS = {1: ["a dog barks"], 2: ["rain falls"]}


def test_cider_d_hand_computed():
    # N = 2 items, every reference n-gram occurs in one item: idf = log 2 for all, so the tf-idf cosine of an
    # exact copy is 1 for n = 1..3 and 0 for n = 4 (a 3-word caption has no 4-gram): 10 * mean(1, 1, 1, 0) = 7.5.
    mean, per_item = cider_d(REFS, {1: ["a dog barks"], 2: ["piano music"]})
    assert per_item.tolist() == pytest.approx([7.5, 0.0])
    assert mean == pytest.approx(3.75)


def test_cider_d_clipping_and_length_penalty():
    # "a dog barks a dog barks" vs "a dog barks": clipped cosines 1/2 (unigrams), 2/(3 sqrt 2) (bigrams),
    # 1/sqrt 6 (trigrams), 0 (4-grams); length difference 3 -> penalty exp(-9 / 72).
    _, per_item = cider_d(REFS, {1: ["a dog barks a dog barks"], 2: ["piano music"]})
    expected = 10 * (0.5 + 2 / (3 * math.sqrt(2)) + 1 / math.sqrt(6)) / 4 * math.exp(-9 / 72)
    assert per_item[0] == pytest.approx(expected)
    assert per_item[0] < 7.5
    # a pure length change with identical n-gram profile is penalised too
    _, near = cider_d({1: ["a a a a"], 2: ["b"]}, {1: ["a a a a a a a a"], 2: ["c"]})
    _, exact = cider_d({1: ["a a a a"], 2: ["b"]}, {1: ["a a a a"], 2: ["c"]})
    assert near[0] < exact[0]


def test_cider_d_corpus_idf_and_empty_references():
    # idf comes from the scored set's references: one item alone has idf 0 everywhere, so even a copy scores 0
    assert cider_d({1: ["a dog barks"]}, {1: ["a dog barks"]})[0] == 0.0
    # references that tokenise to nothing give no document frequencies: every score is 0 (not a library error)
    mean, per_item = cider_d({1: [""], 2: [""]}, {1: ["a dog"], 2: [""]})
    assert mean == 0.0 and per_item.tolist() == [0.0, 0.0]


def test_caption_scores_validation():
    with pytest.raises(ValueError, match="no references"):
        caption_scores({"a": "x", "b": "y"}, {"a": ["x"]})
    with pytest.raises(ValueError, match="no prediction"):
        caption_scores({"a": "x"}, {"a": ["x"], "b": ["y"]})
    with pytest.raises(ValueError, match="non-empty list"):
        caption_scores({"a": "x"}, {"a": []})


def _java_children() -> list[str]:
    """Command lines of live java child processes of this process (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "java" in cmd:
                out.append(cmd)
    return out


@needs_java
def test_caption_scores_through_java():
    refs = {
        "dog": ["A dog is barking.", "a dog barks loudly in the yard"],
        "rain": ["Rain falls on a metal roof.", "heavy rain"],
        "piano": ["someone plays the piano", "piano music is played"],
        "car": ["a car passes by on a road"],
    }
    good = {"dog": "A dog barks loudly in the yard.", "rain": "rain falls on a metal roof",
            "piano": "someone plays the piano", "car": "a car passes by on a road"}
    bad = {"dog": "an orchestra tunes up", "rain": "people talking in a cafe",
           "piano": "birds chirp at dawn", "car": ""}  # an empty caption must not break the tokenizer

    with CaptionScorer() as scorer:  # one METEOR process for both sets
        s_good = scorer.score(good, refs)
        s_bad = scorer.score(bad, refs)
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d"):
        assert isinstance(s_good[key], float) and not math.isnan(s_good[key])
        assert s_good[key] > s_bad[key], key
    assert s_good["bleu_1"] == pytest.approx(1.0, abs=1e-6)  # every prediction copies a reference
    assert s_good["num_items"] == 4
    assert set(s_good["per_item"]["cider_d"]) == set(refs)
    assert s_bad["per_item"]["cider_d"]["car"] == 0.0

    available, reason = spice_status()
    if available:
        assert isinstance(s_good["spice"], float)
        assert s_good["spider"] == pytest.approx((s_good["cider_d"] + s_good["spice"]) / 2)
    else:
        assert s_good["spice"] is None and s_good["spider"] is None
        assert s_good["missing"]["SPICE"] == reason and reason
        with pytest.raises(RuntimeError, match="SPICE requested"):
            caption_scores(good, refs, spice=True)

    # METEOR's Java process is shut down on leaving the context, not left to the garbage collector
    assert _java_children() == []

