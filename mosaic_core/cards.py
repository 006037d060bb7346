"""Model cards: the ``README.md`` every saved encoder folder and ALM artifact carries.

A card is Hugging Face card metadata (a YAML header, written by ``huggingface_hub.ModelCardData``: tags, pipeline
tag, base model, ``model-index`` with the measured results) followed by Markdown sections. The kit generates it at
save time from what it knows (:func:`write_model_card`); results measured later (probe accuracy, QA accuracy) are
added with :func:`add_card_results`, which updates both the ``model-index`` and the results table of the card.

A result is a dict: ``task`` (a Hugging Face task type, e.g. ``audio-classification``), ``task_name`` (what was run,
e.g. ``linear probe``), ``dataset``, optionally ``dataset_name``, ``split``, ``source`` (where the number comes
from; shown with the metric's name), then ``metric`` and ``value``. A result with the same task name, dataset, split
and metric replaces the old.
"""
from __future__ import annotations

import os
from pathlib import Path

from .io import atomic_write_text

CARD_NAME = "README.md"
_START, _END = "<!-- mosaic-alm:results -->", "<!-- /mosaic-alm:results -->"
_NONE_YET = "None recorded yet (the kit adds them here when it measures them, e.g. the pipeline's probes)."


def _eval_result(r: dict):
    from huggingface_hub import EvalResult

    return EvalResult(task_type=r["task"], task_name=r.get("task_name"), dataset_type=r["dataset"],
                      dataset_name=r.get("dataset_name", r["dataset"]), dataset_split=r.get("split"),
                      metric_type=r["metric"], metric_value=round(float(r["value"]), 4),
                      metric_name=f"{r['metric']} ({r['source']})" if r.get("source") else None)


def _key(e) -> tuple:
    return e.task_name, e.dataset_type, e.dataset_split, e.metric_type


def _results_table(results) -> str:
    if not results:
        return _NONE_YET
    rows = ["| task | dataset | split | metric | value |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| {e.task_name or e.task_type} | {e.dataset_name} | {e.dataset_split or ''} | "
             f"{e.metric_name or e.metric_type} | {e.metric_value:.4g} |" for e in results]
    return "\n".join(rows)


def facts_list(facts: dict) -> str:
    """A Markdown bullet list of ``key: value`` facts (None values are left out)."""
    return "\n".join(f"- {k}: {v}" for k, v in facts.items() if v is not None) or "- not recorded"


def write_model_card(folder: str | os.PathLike, *, title: str, summary: str, sections: dict[str, str],
                     metadata: dict, results: list[dict] | None = None) -> Path:
    """Write ``folder/README.md``: the metadata header, ``# title``, the summary, a "Measured results" section
    (``results``, or none yet) after the first section, then the other sections."""
    from huggingface_hub import ModelCardData

    evals = [_eval_result(r) for r in results or []]
    data = ModelCardData(model_name=title, eval_results=evals or None, **metadata)
    parts = [f"# {title}", summary]
    for i, (heading, text) in enumerate(sections.items()):
        parts += [f"## {heading}", text.strip()]
        if i == 0:
            parts += ["## Measured results", f"{_START}\n{_results_table(evals)}\n{_END}"]
    return atomic_write_text(Path(folder) / CARD_NAME, f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n")


def read_card_results(folder: str | os.PathLike) -> list:
    """The ``huggingface_hub.EvalResult`` list of a card (empty if it has none)."""
    from huggingface_hub import ModelCard

    return list(ModelCard.load(Path(folder) / CARD_NAME).data.eval_results or [])


def add_card_results(folder: str | os.PathLike, results: list[dict]) -> Path:
    """Add (or replace) measured results in the card of ``folder``: its ``model-index`` and its results table."""
    from huggingface_hub import ModelCard

    path = Path(folder) / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no model card ({CARD_NAME}) to add results to")
    card = ModelCard.load(path)
    merged = {_key(e): e for e in card.data.eval_results or []}
    merged.update({_key(e): e for e in map(_eval_result, results)})
    card.data.eval_results = list(merged.values())
    if not card.data.model_name:
        card.data.model_name = Path(folder).name
    head, sep, tail = card.text.partition(_START)
    if not sep or _END not in tail:
        raise ValueError(f"{path}: the card has no results block ({_START} ... {_END}); regenerate it")
    text = head + _START + "\n" + _results_table(card.data.eval_results) + "\n" + tail[tail.index(_END):]
    return atomic_write_text(path, f"---\n{card.data.to_yaml()}\n---\n{text}")


__all__ = ["CARD_NAME", "add_card_results", "facts_list", "read_card_results", "write_model_card"]
