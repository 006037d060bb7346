"""The encoder evaluation's tables: accuracy (one row per encoder and probe, one column per task and test split) and
the few-label section (read by ``mosaic-alm eval-encoder``'s report and by the run report)."""
from __future__ import annotations

from eval.results import mean_std, plot_label_curve
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


def few_label_section(few: dict) -> tuple[str, list]:
    """The report's few-label section: a table (rows: encoders; columns: task x labels per class, test split) and a
    curve per task."""
    note = (f"Test accuracy of the linear read-out fitted on k labelled training clips per class "
            f"(mean ± std over {few['draws']} draws of the labelled clips, the same clips for every encoder; "
            "\"all\": the whole train split, one fit).")
    rows: dict = {}
    figs = []
    for task, by_enc in few["tasks"].items():
        curves = {}
        for enc, by_k in by_enc.items():
            for k, by_role in by_k.items():
                if "test" in by_role:
                    unit = "fit" if k == "all" else "draw"
                    rows.setdefault(enc, {})[f"{task} {k}"] = mean_std(by_role["test"]["accuracy"], unit=unit)
            curves[enc] = {k: by_role["test"]["accuracy"] for k, by_role in by_k.items() if "test" in by_role}
        figs.append(plot_label_curve(curves, title=f"{task}: test accuracy by labels per class"))
    return "Few labels", [note, rows, *figs]
