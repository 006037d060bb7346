"""Closed-ended QA accuracy and classification by generation (with the real bundled MiniLM embedder)."""

from __future__ import annotations

import numpy as np
import pytest

from eval.classify_by_generation import DEFAULT_EMBEDDER, TextEmbedder, classify_by_generation
from eval.qa import closed_ended_accuracy, match_option, normalise_answer


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The Dog.", "dog"),
        ("  A   dog, barking!  ", "dog barking"),
        ("an Apple", "apple"),
        ("Yes", "yes"),
        ("theatre", "theatre"),  # 'the' inside a word stays
        ("", ""),
    ],
)
def test_normalise_answer(raw, expected):
    assert normalise_answer(raw) == expected


def test_match_option():
    opts = ["dog", "hot dog", "cat"]
    assert match_option("Hot dog.", opts) == 1  # exact after normalisation
    assert match_option("I think it is a hot dog", opts) == 1  # 'dog' is part of the longer 'hot dog'
    assert match_option("a dog, surely", opts) == 0
    assert match_option("a dog or a cat", opts) is None  # ambiguous
    assert match_option("a horse", opts) is None
    assert match_option("category", ["cat", "dog"]) is None  # whole words only


def test_closed_ended_accuracy_per_type():
    records = [
        {"qtype": "yes/no", "prediction": "Yes.", "output": "yes", "options": ["yes", "no"]},
        {"qtype": "yes/no", "prediction": "No, it is not.", "output": "yes", "options": ["yes", "no"]},
        {"qtype": "yes/no", "prediction": "yes", "output": "Yes"},
        {"qtype": "which", "prediction": "It is a dog barking", "output": "dog", "options": ["dog", "cat"]},
        {"qtype": "which", "prediction": "the cat", "output": ["cat", "kitten"], "options": ["dog", "cat"]},
        {"qtype": "which", "prediction": "dog or cat", "output": "dog", "options": ["dog", "cat"]},
    ]
    out = closed_ended_accuracy(records)
    assert out["overall"]["count"] == 6
    assert out["overall"]["exact_match"] == pytest.approx(3 / 6)  # Yes., yes, the cat
    assert out["overall"]["option_match"] == pytest.approx(4 / 6)  # + "It is a dog barking"
    yn, which = out["per_qtype"]["yes/no"], out["per_qtype"]["which"]
    assert (yn["count"], yn["count_with_options"]) == (3, 2)
    assert yn["exact_match"] == pytest.approx(2 / 3) and yn["option_match"] == pytest.approx(2 / 3)
    assert which["exact_match"] == pytest.approx(1 / 3)
    assert which["option_match"] == pytest.approx(2 / 3)
    assert which["ambiguous_or_none"] == 1


def test_closed_ended_accuracy_validation():
    with pytest.raises(ValueError, match="no records"):
        closed_ended_accuracy([])
    with pytest.raises(ValueError, match="'output'"):
        closed_ended_accuracy([{"qtype": "a", "prediction": "x"}])


@pytest.fixture(scope="module")
def embedder():
    return TextEmbedder()  # the bundled offline all-MiniLM-L6-v2


def test_classify_by_generation_with_minilm(embedder):
    labels = ["dog", "rain", "piano"]
    preds = ["a dog barking loudly", "heavy rain falling on a roof", "someone playing a piano melody"]
    out = classify_by_generation(preds, labels, [0, 1, 2], embedder=embedder)
    assert out["embedder"] == DEFAULT_EMBEDDER
    assert out["predicted_labels"] == ["dog", "rain", "piano"]
    assert out["accuracy"] == 1.0
    assert out["scores"].shape == (3, 3)
    assert np.all(out["scores"] <= 1.0 + 1e-5)

    # multi-label targets -> mAP over the similarity scores
    multi = classify_by_generation(preds, labels, np.eye(3, dtype=int), embedder=embedder)
    assert multi["mAP"] == pytest.approx(1.0)
    assert multi["top1_precision"] == 1.0
    assert multi["classes_skipped_mAP"] == 0

    # no targets: only the mapping
    only = classify_by_generation(["piano music"], labels, embedder=embedder, label_template="sound of {}")
    assert only["predicted_labels"] == ["piano"] and "accuracy" not in only


def test_classify_by_generation_validation(embedder):
    with pytest.raises(ValueError, match="two label names"):
        classify_by_generation(["x"], ["dog"], embedder=embedder)
    with pytest.raises(ValueError, match="unique"):
        classify_by_generation(["x"], ["dog", "dog"], embedder=embedder)
    with pytest.raises(ValueError, match="class indices"):
        classify_by_generation(["x"], ["dog", "cat"], [5], embedder=embedder)
