"""Closed-ended question answering accuracy for the ALM.

Two scores per record, both after :func:`normalise_answer` (SQuAD-style normalisation):

* ``exact_match``: the normalised generated answer equals the normalised label.
* ``option_match``: the generated answer is mapped to one of the record's ``options`` -- the option it equals, or
  else the single option it contains as a whole-word phrase (when several options are contained, options that are
  part of a longer contained option are dropped first, so "a hot dog" picks "hot dog" over "dog"; if more than one
  remains the answer is ambiguous and counts as wrong) -- and is correct when that option is the label. Records
  without options fall back to exact match.

Accuracy is reported overall and per question type (``qtype``), with counts.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["normalise_answer", "match_option", "closed_ended_accuracy"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalise_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace (SQuAD normalisation)."""
    if not isinstance(s, str):
        raise ValueError(f"normalise_answer: expected a str, got {type(s).__name__}")
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _contains_phrase(text: str, phrase: str) -> bool:
    return bool(phrase) and f" {phrase} " in f" {text} "


def match_option(prediction: str, options: Sequence[str]) -> int | None:
    """Index of the option the prediction selects (see module docstring), or ``None`` if none / ambiguous."""
    pred = normalise_answer(prediction)
    norm = [normalise_answer(o) for o in options]
    equal = [i for i, o in enumerate(norm) if o == pred]
    if equal:
        # duplicates after normalisation are the same answer; take the first
        return equal[0]
    contained = [i for i, o in enumerate(norm) if _contains_phrase(pred, o)]
    # drop options that are a sub-phrase of another contained option ("dog" inside "hot dog")
    maximal = [
        i for i in contained if not any(j != i and norm[j] != norm[i] and _contains_phrase(norm[j], norm[i])
                                        for j in contained)
    ]
    distinct = {norm[i] for i in maximal}
    if len(distinct) == 1:
        return maximal[0]
    return None


def _label_strings(output: Any) -> list[str]:
    """A label may be one string or a list of acceptable strings."""
    if isinstance(output, str):
        return [output]
    if isinstance(output, (list, tuple)) and output and all(isinstance(o, str) for o in output):
        return list(output)
    raise ValueError(f"closed_ended_accuracy: 'output' must be a str or a list of str, got {output!r}")


def closed_ended_accuracy(records: Iterable[Mapping[str, Any]]) -> dict:
    """Exact-match and option-match accuracy overall and per question type.

    Args:
        records: mappings with ``qtype`` (str), ``prediction`` (generated answer, str), ``output`` (the label: a str,
            or a list of acceptable strings) and optionally ``options`` (list of str).

    Returns:
        ``{"overall": {"exact_match", "option_match": float, "count", "count_with_options", "ambiguous_or_none": int},
        "per_qtype": {qtype: same keys}}``. ``ambiguous_or_none`` counts records with options whose prediction
        selected no option.
    """
    buckets: dict[str | None, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    n = 0
    for k, rec in enumerate(records):
        for key in ("qtype", "prediction", "output"):
            if key not in rec:
                raise ValueError(f"closed_ended_accuracy: record {k} has no {key!r}")
        if not isinstance(rec["prediction"], str):
            raise ValueError(f"closed_ended_accuracy: record {k} prediction is not a str")
        labels = _label_strings(rec["output"])
        norm_labels = {normalise_answer(x) for x in labels}
        exact = normalise_answer(rec["prediction"]) in norm_labels

        options = rec.get("options")
        if options:
            options = list(options)
            if not all(isinstance(o, str) for o in options):
                raise ValueError(f"closed_ended_accuracy: record {k} options must be strings")
            chosen = match_option(rec["prediction"], options)
            option_ok = chosen is not None and normalise_answer(options[chosen]) in norm_labels
        else:
            chosen, option_ok = None, exact

        for name in (None, str(rec["qtype"])):  # None: overall
            b = buckets[name]
            b["count"] += 1
            b["exact"] += int(exact)
            b["option"] += int(option_ok)
            if options:
                b["with_options"] += 1
                b["none"] += int(chosen is None)
        n += 1
    if n == 0:
        raise ValueError("closed_ended_accuracy: no records")

    def summary(b: Mapping[str, int]) -> dict:
        return {
            "exact_match": b["exact"] / b["count"],
            "option_match": b["option"] / b["count"],
            "count": b["count"],
            "count_with_options": b["with_options"],
            "ambiguous_or_none": b["none"],
        }

    return {
        "overall": summary(buckets[None]),
        "per_qtype": {q: summary(buckets[q]) for q in sorted(q for q in buckets if q is not None)},
    }
