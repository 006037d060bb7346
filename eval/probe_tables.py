"""The encoder evaluation's accuracy table: one row per encoder and probe, one column per task and test split
(read by ``mosaic-alm eval-encoder``'s report and by the run report)."""
from __future__ import annotations

from eval.results import mean_std
from mosaic_core.tables import markdown_table


def accuracy_rows(numbers: dict) -> dict:
    """{"encoder / probe": {"task split": "mean ± std (n=k)" or "mean (1 seed)"}} (:func:`eval.results.mean_std`: no
    spread is claimed for one run); the MFCC baseline has no probe level."""
    rows = {}
    for task, by_enc in numbers.items():
        for enc, by_probe in by_enc.items():
            items = [("logreg", by_probe)] if enc == "mfcc_logreg" else by_probe.items()
            for probe, by_role in items:
                if not isinstance(by_role, dict):
                    continue
                for role, m in by_role.items():
                    if isinstance(m, dict) and "accuracy" in m:
                        rows.setdefault(f"{enc} / {probe}", {})[f"{task} {role}"] = mean_std(m["accuracy"])
    return rows


def format_table(numbers: dict) -> str:
    rows = accuracy_rows(numbers)
    cols = sorted({c for r in rows.values() for c in r})
    return markdown_table(["encoder / probe", *cols],
                          [[name, *(r.get(c, "") for c in cols)] for name, r in rows.items()])
