"""The encoder evaluation harness end to end on the small embedded data (tiny encoder, few probe epochs)."""
import json
from pathlib import Path

import pytest
import torch

from encoder.pretraining import export_encoder
from encoder.vit import AudioMosaicViT, EncoderConfig
from mosaic_core.config import ConfigError, load_recipe
from recipes.eval_encoder import EncoderEvalConfig, evaluate

REPO = Path(__file__).resolve().parents[1]


def test_eval_encoder_writes_side_by_side_results(embedded_root, tmp_path):
    torch.manual_seed(0)
    export_encoder(AudioMosaicViT(EncoderConfig(size="tiny", depth=2, target_frames=128)), tmp_path / "enc")
    cfg, _ = load_recipe(EncoderEvalConfig, REPO / "configs/eval/encoder_embedded.yaml", [
        f"data_root={embedded_root}", f"run_dir={tmp_path / 'run'}",
        f"encoders={{a: {tmp_path / 'enc'}, random: random}}",
        "probe_seeds=[0]", "probe.epochs=3", "max_clips_per_split=40",
        "tasks=[configs/data/embedded_keywords.yaml, configs/data/embedded_environment.yaml]"])
    res = evaluate(cfg)
    out = json.loads((tmp_path / "run/encoder_eval.json").read_text())
    assert set(out["numbers"]["tasks"]) == {"embedded_keywords", "embedded_environment"}
    kw = out["numbers"]["tasks"]["embedded_keywords"]
    assert set(kw) == {"mfcc_logreg", "a", "random"}
    for probe in ("linear", "weighted", "attentive"):
        acc = kw["a"][probe]["test"]["accuracy"]["mean"]
        assert 0.0 <= acc <= 1.0
    assert "test_xengine" in kw["a"]["linear"]
    assert len(kw["a"]["linear_by_layer_test"]) == 3  # embeddings + 2 blocks
    assert (tmp_path / "run/encoder_eval.md").is_file() and (tmp_path / "run/encoder_eval.html").is_file()
    assert res["seconds"] > 0


def test_eval_encoder_rejects_unknown_keys(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(f"base: {REPO / 'configs/eval/encoder_embedded.yaml'}\nprobe: {{typo: 1}}\n")
    with pytest.raises(ConfigError, match="unknown key 'probe.typo'"):
        load_recipe(EncoderEvalConfig, recipe)


def test_split_waves_keeps_decodable_clips_with_their_labels(embedded_root, tmp_path):
    """eval.embeddings.split_waves: every split's decodable clips with class indices; an undecodable clip is left
    out, not mislabelled (the measurement scripts of results/ read the tasks through it)."""
    import shutil

    from encoder.data.tasks import TaskConfig, load_task
    from eval.embeddings import split_waves

    root = tmp_path / "data"
    shutil.copytree(embedded_root / "environment", root / "environment")
    rows = [json.loads(line) for line in (root / "environment" / "manifest.jsonl").read_text().splitlines()]
    victim = next(r for r in rows if r["split"] == "test")
    (root / "environment" / victim["path"]).write_bytes(b"not audio")
    cfg = TaskConfig(config="configs/data/embedded_environment.yaml", data_root=str(root), cache="never")
    task = load_task(cfg)
    out = split_waves(task)
    assert set(out) == set(task.splits)
    for role, (waves, y) in out.items():
        n = len(task.splits[role]) - (role == "test")
        assert len(waves) == len(y) == n and all(w.ndim == 1 and len(w) > 0 for w in waves)
    test_rows = [r for r in rows if r["split"] == "test" and r["id"] != victim["id"]]
    assert out["test"][1].tolist() == [task.classes.index(r["label"]) for r in test_rows]
