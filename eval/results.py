"""Results JSON and Markdown / HTML reports for evaluation runs.

* :func:`write_results` writes ``{run_dir}/{name}.json``: the numbers, the resolved config, the seed, the git commit
  (when the code lives in a git checkout that has one), library versions, the machine (CPU model, cores) and a UTC
  timestamp. NaN or infinite
  numbers are refused (a report must never carry a silent NaN).
* :func:`write_report` writes ``{run_dir}/{name}.md`` (figures as PNG files next to it) and ``{run_dir}/{name}.html``
  (the same content, self-contained: figures inlined as base64 PNG).
* Plot helpers return matplotlib ``Figure`` objects built with the object-oriented API (Agg canvas; pyplot and the
  global backend are never touched): :func:`plot_confusion_matrix`, :func:`plot_per_class_accuracy`,
  :func:`plot_probe_by_layer`, :func:`plot_training_curves`.

A report's ``sections`` is a sequence of ``(heading, items)``; each item is one of

* ``str``: a paragraph;
* a mapping: a table (``{key: value}`` -> two columns, a key whose value is None or NaN left out;
  ``{row: {col: value}}`` -> one row per key, a missing or None cell shown as a dash);
* a sequence of mappings: a table with one row per mapping;
* a matplotlib ``Figure``: saved as PNG;
* a ``pathlib.Path`` to an existing PNG: included as is;
* an :class:`Html` block: markup for the HTML page (e.g. a clip card with an ``<audio>`` player built from
  :func:`wav_data_uri` / :func:`png_data_uri`), its ``text`` for the Markdown.

``write_report(..., markdown=False)`` writes the HTML page only (figures inlined, nothing else on disk): the run
report ``mosaic-alm report`` builds is one self-contained file.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_core.io import atomic_write_bytes, atomic_write_text
from mosaic_core.provenance import git_commit, library_versions, machine_info
from mosaic_core.tables import html_table, markdown_table

__all__ = [
    "Html",
    "figure_png",
    "git_commit",
    "library_versions",
    "mean_std",
    "plot_confusion_matrix",
    "plot_grouped_bars",
    "plot_label_curve",
    "plot_per_class_accuracy",
    "plot_probe_by_layer",
    "plot_training_curves",
    "png_data_uri",
    "wav_data_uri",
    "write_report",
    "write_results",
]



# --------------------------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------------------------
def _jsonable(obj: Any, where: str = "numbers") -> Any:
    """Convert numpy / torch / Path values to JSON types; raise on NaN or infinity, naming the key."""
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch tensor
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"write_results: {where} is {obj}; refusing to write a non-finite number")
        return obj
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise ValueError(f"write_results: {where} has type {type(obj).__name__}, which JSON cannot hold")


def write_results(
    run_dir: str | os.PathLike, name: str, numbers: Mapping[str, Any], config: Mapping[str, Any], seed: int | None
) -> Path:
    """Write ``{run_dir}/{name}.json`` and return its path.

    Content: ``name``, ``numbers``, ``config``, ``seed``, ``git`` (``commit``, ``dirty``), ``versions``
    (:func:`library_versions`), ``machine`` (:func:`mosaic_core.provenance.machine_info`), ``command``
    (``sys.argv``), ``timestamp`` (UTC ISO 8601). Numpy / torch values are
    converted; NaN or infinity raises ``ValueError`` naming the offending key.
    """
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ValueError(f"write_results: name {name!r} must be a plain file stem (letters, digits, . _ -)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": name,
        "numbers": _jsonable(numbers, "numbers"),
        "config": _jsonable(config, "config"),
        "seed": _jsonable(seed, "seed"),
        "git": git_commit(),
        "versions": library_versions(),
        "machine": machine_info(),
        "command": list(sys.argv),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = run_dir / f"{name}.json"
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return path


# --------------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------------
def mean_std(stats: Mapping[str, Any], digits: int = 3, unit: str = "seed") -> str:
    """A ``{"mean", "std", "runs"}`` summary as text that claims only what was measured: ``"0.811 (1 seed)"`` for
    one run, ``"0.811 ± 0.012 (n=3)"`` for several; without ``runs`` the mean alone unless the std is nonzero."""
    mean, std, runs = stats.get("mean"), stats.get("std"), stats.get("runs")
    if mean is None:
        return "—"
    text = f"{mean:.{digits}f}"
    if runs is not None and len(runs) == 1:
        return f"{text} (1 {unit})"
    if std is None or (runs is None and not std):
        return text
    return f"{text} ± {std:.{digits}f}" + (f" (n={len(runs)})" if runs is not None else "")


def _missing_value(v: Any) -> bool:
    """None or NaN: a value that was not measured (left out of key/value tables, a dash in a table's cell)."""
    return v is None or isinstance(v, (float, np.floating)) and math.isnan(v)


def _fmt(v: Any) -> str:
    if isinstance(v, (np.generic,)):
        v = v.item()
    if _missing_value(v):
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e5 else f"{v:.4g}"
    return str(v)


def _table_rows(item: Any) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a table item."""
    if isinstance(item, Mapping):
        if item and all(isinstance(v, Mapping) for v in item.values()):
            cols: list[str] = []
            for v in item.values():
                cols += [str(c) for c in v if str(c) not in cols]
            rows = [[str(k)] + [_fmt(dict((str(a), b) for a, b in v.items()).get(c)) for c in cols]
                    for k, v in item.items()]
            return [""] + cols, rows
        return ["key", "value"], [[str(k), _fmt(v)] for k, v in item.items() if not _missing_value(v)]
    cols = []
    for r in item:
        cols += [str(c) for c in r if str(c) not in cols]
    return cols, [[_fmt(dict((str(a), b) for a, b in r.items()).get(c)) for c in cols] for r in item]


def _is_table(item: Any) -> bool:
    if isinstance(item, Mapping):
        return True
    return isinstance(item, Sequence) and not isinstance(item, str) and bool(item) and all(
        isinstance(r, Mapping) for r in item
    )


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_") or "section"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "th{background:#f3f3f3}img{max-width:100%;margin:1em 0}"
    ".clip{border:1px solid #ddd;border-radius:6px;padding:0.5em 1em;margin:1em 0}.clip audio{width:100%}"
    ".note{color:#777;font-style:italic}"
)


@dataclass(frozen=True)
class Html:
    """A report item given as HTML markup (trusted: built by the kit, user text escaped by the caller); ``text``
    stands for it in the Markdown report."""

    html: str
    text: str = ""


def figure_png(fig, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib Figure (saved with a tight bounding box)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def wav_data_uri(wave: Any, sample_rate: int) -> str:
    """A mono waveform (float, -1..1) as a 16-bit PCM WAV ``data:`` URI for an ``<audio>`` element."""
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wave, dtype=np.float32).reshape(-1), -1.0, 1.0), int(sample_rate),
             format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_report(
    run_dir: str | os.PathLike,
    title: str,
    sections: Sequence[tuple[str, Sequence[Any]]] | Mapping[str, Sequence[Any]],
    *,
    name: str = "report",
    markdown: bool = True,
) -> tuple[Path | None, Path]:
    """Write ``{run_dir}/{name}.md`` and a self-contained ``{run_dir}/{name}.html``; return both paths.

    Figures are saved as ``{name}_{section}_{k}.png`` next to the Markdown (which links them) and inlined into the
    HTML as base64. With ``markdown=False`` only the HTML is written (and ``None`` returned for the Markdown).
    See the module docstring for the item types.
    """
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(sections, Mapping):
        sections = list(sections.items())
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    md += [f"_Generated {stamp}_", ""]
    body.append(f"<p><em>Generated {html.escape(stamp)}</em></p>")

    for s_idx, (heading, items) in enumerate(sections):
        if isinstance(items, (str, Figure, os.PathLike)) or _is_table(items) and isinstance(items, Mapping):
            items = [items]
        md += [f"## {heading}", ""]
        body.append(f"<h2>{html.escape(str(heading))}</h2>")
        for k, item in enumerate(items):
            if isinstance(item, str):
                md += [item, ""]
                body.append(f"<p>{html.escape(item)}</p>")
            elif isinstance(item, Html):
                md += [item.text, ""] if item.text else []
                body.append(item.html)
            elif isinstance(item, (Figure, os.PathLike)):
                if isinstance(item, Figure):
                    data = figure_png(item)
                    png = run_dir / f"{name}_{s_idx}_{_slug(str(heading))}_{k}.png"
                    if markdown:
                        atomic_write_bytes(png, data)
                else:
                    png = Path(item)
                    if not png.is_file():
                        raise ValueError(f"write_report: image {png} does not exist")
                    data = png.read_bytes()
                md += [f"![{heading}]({os.path.relpath(png, run_dir)})", ""]
                body.append(f'<img alt="{html.escape(str(heading))}" src="{png_data_uri(data)}">')
            elif _is_table(item):
                header, rows = _table_rows(item)
                md += [markdown_table(header, rows), ""]
                body.append(html_table(header, rows))
            else:
                raise ValueError(
                    f"write_report: section {heading!r} item {k} has type {type(item).__name__}; expected str, "
                    "mapping, list of mappings, matplotlib Figure, Path to a PNG or Html"
                )

    md_path = run_dir / f"{name}.md" if markdown else None
    html_path = run_dir / f"{name}.html"
    if md_path is not None:
        atomic_write_text(md_path, "\n".join(md).rstrip() + "\n")
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    atomic_write_text(html_path, page)
    return md_path, html_path


# --------------------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_confusion_matrix(cm: Any, class_names: Sequence[str] | None = None, *, normalise: bool = True,
                          title: str = "Confusion matrix"):
    """Heat map of a ``[C, C]`` count matrix (rows: true class). ``normalise`` divides each row by its count."""
    m = np.asarray(cm, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"plot_confusion_matrix: expected a square matrix, got shape {m.shape}")
    c = m.shape[0]
    if class_names is not None and len(class_names) != c:
        raise ValueError(f"plot_confusion_matrix: {len(class_names)} names for {c} classes")
    if normalise:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1.0)
    size = min(max(4.0, 0.35 * c + 2.0), 16.0)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0 if normalise else None)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if class_names is not None and c <= 60:
        ax.set_xticks(range(c), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(c), class_names, fontsize=7)
    if c <= 12:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{m[i, j]:.2f}" if normalise else f"{int(m[i, j])}", ha="center", va="center",
                        fontsize=7, color="white" if m[i, j] > 0.5 * m.max() else "black")
    return fig


def plot_per_class_accuracy(per_class: Mapping[Any, float] | Sequence[float],
                            class_names: Sequence[str] | None = None, *, title: str = "Per-class accuracy"):
    """Horizontal bars of per-class accuracy, sorted from worst to best. ``per_class`` is ``{index: acc}`` (as
    from :func:`eval.metrics.per_class_accuracy`) or a sequence; ``class_names[index]`` labels the bars."""
    items = list(per_class.items()) if isinstance(per_class, Mapping) else list(enumerate(per_class))
    if not items:
        raise ValueError("plot_per_class_accuracy: nothing to plot")
    items.sort(key=lambda kv: kv[1])
    labels = [class_names[k] if class_names is not None and isinstance(k, (int, np.integer)) else str(k)
              for k, _ in items]
    fig = _figure(7.0, min(max(3.0, 0.22 * len(items) + 1.0), 30.0))
    ax = fig.add_subplot()
    ax.barh(range(len(items)), [v for _, v in items], color="tab:blue")
    ax.set_yticks(range(len(items)), labels, fontsize=7 if len(items) > 20 else 9)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("accuracy")
    ax.set_title(title)
    return fig


def plot_probe_by_layer(scores: Sequence[float] | Mapping[str, Sequence[float]], *, metric: str = "accuracy",
                        baselines: Mapping[str, float] | None = None, title: str = "Linear probe by layer"):
    """Probe metric against layer index (one line per series) with optional horizontal baseline lines
    (e.g. ``{"MFCC + LR": 0.41, "random init": 0.3}``)."""
    series = dict(scores) if isinstance(scores, Mapping) else {metric: list(scores)}
    if not series or not any(len(v) for v in series.values()):
        raise ValueError("plot_probe_by_layer: nothing to plot")
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    for label, vals in series.items():
        ax.plot(range(len(vals)), list(vals), marker="o", label=str(label))
    for k, (label, value) in enumerate((baselines or {}).items()):
        ax.axhline(float(value), linestyle="--", color=f"C{(k + len(series)) % 10}", label=str(label))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_label_curve(curves: Mapping[str, Mapping[str, Mapping[str, float]]], *, title: str = "Accuracy by labels",
                     metric: str = "accuracy"):
    """Metric against labelled clips per class (log x axis), one line per series with a ±std band: ``curves`` is
    ``{series: {k: {"mean", "std"}}}`` where ``k`` is a number or ``"all"`` (drawn at the largest number x 2, its
    tick labelled "all")."""
    if not curves or not any(curves.values()):
        raise ValueError("plot_label_curve: nothing to plot")
    numeric = sorted({int(k) for c in curves.values() for k in c if k != "all"})
    all_x = (numeric[-1] * 4) if numeric else 1
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    for label, by_k in curves.items():
        ks = sorted(by_k, key=lambda k: all_x if k == "all" else int(k))
        xs = [all_x if k == "all" else int(k) for k in ks]
        mean = np.array([by_k[k]["mean"] for k in ks], dtype=float)
        std = np.array([by_k[k].get("std", 0.0) for k in ks], dtype=float)
        line, = ax.plot(xs, mean, marker="o", label=str(label))
        ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ticks = numeric + [all_x]
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in numeric] + ["all"])
    ax.minorticks_off()
    ax.set_xlabel("labelled training clips per class")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_training_curves(history: Mapping[str, Sequence[float]], *, x_label: str = "epoch",
                         title: str = "Training curves"):
    """Curves of a training history (e.g. :func:`eval.probes.fit_probe`'s): series whose name contains "loss" on a
    left panel, the other numeric series (metrics, learning rate excluded) on a right panel."""
    numeric = {k: list(v) for k, v in history.items()
               if isinstance(v, Sequence) and not isinstance(v, str) and v
               and all(isinstance(x, (int, float, np.number)) for x in v)}
    losses = {k: v for k, v in numeric.items() if "loss" in k}
    others = {k: v for k, v in numeric.items() if "loss" not in k and k != "lr"}
    if not losses and not others:
        raise ValueError("plot_training_curves: no numeric series in history")
    panels = [p for p in (("loss", losses), ("metric", others)) if p[1]]
    fig = _figure(5.0 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    from matplotlib.ticker import MaxNLocator

    for ax, (ylabel, group) in zip(axes, panels):
        for label, vals in group.items():
            ax.plot(range(1, len(vals) + 1), vals, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(x_label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def plot_grouped_bars(values: Mapping[str, Mapping[str, float]],
                      intervals: Mapping[str, Mapping[str, Sequence[float]]] | None = None, *,
                      ylabel: str = "accuracy", title: str = "", chance: Mapping[str, float] | None = None):
    """Bars per category (x) for each series (``values[series][category]``), with optional ``[low, high]``
    error bars (``intervals[series][category]``) and a chance-level tick per category."""
    series = list(values)
    cats = sorted({c for v in values.values() for c in v})
    if not series or not cats:
        raise ValueError("plot_grouped_bars: nothing to plot")
    fig = _figure(max(6.0, 0.9 * len(cats) * max(1, len(series)) / 2 + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for k, name in enumerate(series):
        xs = np.arange(len(cats)) + (k - (len(series) - 1) / 2) * width
        ys = np.array([values[name].get(c, np.nan) for c in cats], dtype=float)
        err = None
        if intervals and name in intervals:
            lo_hi = np.array([intervals[name].get(c, (y, y)) for c, y in zip(cats, ys)], dtype=float)
            err = np.abs(np.stack([ys - lo_hi[:, 0], lo_hi[:, 1] - ys]))
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=str(name))
    for i, c in enumerate(cats):
        if chance and c in chance:
            ax.hlines(chance[c], i - 0.45, i + 0.45, colors="black", linestyles=":", linewidth=1)
    ax.set_xticks(range(len(cats)), [str(c).replace("_", " ") for c in cats], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig
