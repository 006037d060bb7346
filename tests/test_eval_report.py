"""Results JSON and the Markdown / HTML report with plots."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from eval.metrics import confusion_matrix, per_class_accuracy
from eval.results import (
    mean_std,
    plot_confusion_matrix,
    plot_per_class_accuracy,
    plot_probe_by_layer,
    plot_training_curves,
    write_report,
    write_results,
)


def test_write_results_records_provenance(tmp_path):
    numbers = {"accuracy": np.float32(0.75), "per_layer": np.array([0.5, 0.75]), "logits": torch.tensor([1.0, 2.0]),
               "n": np.int64(3), "missing": None}
    path = write_results(tmp_path / "run", "esc50_probe", numbers, {"probe": {"lr": 1e-3}, "layers": [1, 2]}, seed=7)
    assert path == tmp_path / "run" / "esc50_probe.json"
    data = json.loads(path.read_text())
    assert data["numbers"] == {"accuracy": 0.75, "per_layer": [0.5, 0.75], "logits": [1.0, 2.0], "n": 3,
                               "missing": None}
    assert data["config"]["probe"]["lr"] == 1e-3 and data["seed"] == 7
    assert set(data["versions"]) >= {"python", "torch", "transformers", "numpy"}
    assert data["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert "commit" in data["git"] and "timestamp" in data
    assert data["machine"]["cores"] >= 1 and data["machine"]["arch"]  # what its wall times depend on
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_write_results_records_the_command_line(tmp_path, monkeypatch):
    """The argv of the run that wrote the JSON (a results/ script's arguments and recipe file included)."""
    argv = ["results/alm_balance/stage_eval.py", "OUT", "--recipe", "results/alm_balance/recipe.yaml", "seed=1"]
    monkeypatch.setattr(sys, "argv", argv)
    data = json.loads(write_results(tmp_path, "r", {"x": 1}, {}, seed=None).read_text())
    assert data["command"] == argv
    assert set(data["git"]) >= {"commit", "dirty"}


def test_write_results_refuses_nan_and_bad_names(tmp_path):
    with pytest.raises(ValueError, match=r"numbers\.mAP"):
        write_results(tmp_path, "r", {"mAP": float("nan")}, {}, seed=0)
    with pytest.raises(ValueError, match="file stem"):
        write_results(tmp_path, "../escape", {}, {}, seed=0)
    with pytest.raises(ValueError, match="type object"):
        write_results(tmp_path, "r", {"x": object()}, {}, seed=0)


def test_write_report_markdown_html_and_plots(tmp_path):
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2])
    names = ["dog", "rain", "piano"]
    history = {"train_loss": [1.0, 0.6, 0.4], "valid_metric": [0.5, 0.7, 0.8], "lr": [1e-3, 5e-4, 0.0]}
    sections = [
        ("Summary", ["Linear probe on toy features | with a pipe.",
                     {"accuracy": 0.714, "seed": 0},
                     {"probe": {"acc": 0.71, "mAP": 0.8}, "MFCC + LR": {"acc": 0.4}}]),
        ("Confusion", [plot_confusion_matrix(confusion_matrix(y_true, y_pred), names)]),
        ("Per class", [plot_per_class_accuracy(per_class_accuracy(y_true, y_pred), names)]),
        ("Layers", [plot_probe_by_layer({"AudioMosaic": [0.3, 0.5, 0.7]}, baselines={"MFCC + LR": 0.4})]),
        ("Curves", plot_training_curves(history)),  # a single item needs no list
        ("Rows", [[{"model": "a", "acc": 0.5}, {"model": "b", "acc": 0.6, "note": "x"}]]),
    ]
    md_path, html_path = write_report(tmp_path, "Toy <run>", sections)
    md, page = md_path.read_text(), html_path.read_text()

    pngs = sorted(tmp_path.glob("report_*.png"))
    assert len(pngs) == 4
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({p.name})" in md
    assert page.count("data:image/png;base64,") == 4  # self-contained
    assert "# Toy <run>" in md and "<h1>Toy &lt;run&gt;</h1>" in page
    assert "| accuracy | 0.7140 |" in md
    assert "| probe | 0.7100 | 0.8000 |" in md and "| MFCC + LR | 0.4000 | — |" in md
    assert "| b | 0.6000 | x |" in md
    assert "<td>0.7140</td>" in page


def test_write_report_rejects_unknown_items(tmp_path):
    with pytest.raises(ValueError, match="expected str"):
        write_report(tmp_path, "t", [("s", [3.14])])
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix(np.zeros((2, 3)))


def test_mean_std_claims_no_spread_for_one_run():
    assert mean_std({"mean": 0.81125, "std": 0.0, "runs": [0.81125]}) == "0.811 (1 seed)"
    assert mean_std({"mean": 0.85, "std": 0.05, "runs": [0.8, 0.85, 0.9]}) == "0.850 ± 0.050 (n=3)"
    assert mean_std({"mean": 0.5, "std": 0.0}) == "0.500"  # n unknown and no spread: the mean alone
    assert mean_std({"mean": 0.5, "std": 0.1}) == "0.500 ± 0.100"


def test_report_tables_leave_out_unmeasured_values(tmp_path):
    _, page = write_report(tmp_path, "t", [("s", [{"cider_d": 0.07, "spice": None, "spider": float("nan")},
                                                  [{"a": 1.0, "b": float("nan")}]])], markdown=False)
    text = page.read_text()
    assert "cider_d" in text and "spice" not in text and "spider" not in text
    assert "nan" not in text and "None" not in text and "<td>—</td>" in text
