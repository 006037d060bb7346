"""The caption baselines of eval-alm: retrieval (the nearest training clip's caption by the frozen encoder's
standardised pooled feature) finds a training clip's own caption, and every baseline is scored by the same harness
on the same clips, beside the model's captions in one table."""
from __future__ import annotations

import json

import torch

from eval.alm_benchmark import retrieval_captions


def test_retrieval_of_training_clips_returns_their_own_captions(embedded_instructions, tmp_path):
    from encoder.pretraining import export_encoder
    from encoder.vit import AudioMosaicViT, EncoderConfig
    from mosaic_alm.data import load_records

    torch.manual_seed(0)
    export_encoder(AudioMosaicViT(EncoderConfig(size="tiny", depth=2, target_frames=128)), tmp_path / "enc")
    caps = sorted(load_records(embedded_instructions, "train", qtypes=["caption"]), key=lambda r: r["id"])
    first: dict[str, dict] = {}
    for r in caps:
        first.setdefault(r["audio_id"], r)
    picked = [first[k] for k in sorted(first)[::max(1, len(first) // 12)]][:12]
    got = retrieval_captions(str(tmp_path / "enc"), str(embedded_instructions), [r["audio_path"] for r in picked],
                             128)
    # a clip is its own nearest neighbour unless another training clip has the very same features (silence, a
    # duplicate render): then its caption must still describe the same sound
    same = sum(g == r["output"] for g, r in zip(got, picked))
    assert same >= len(picked) - 2, list(zip(got, [r["output"] for r in picked]))


def _no_audio_artifact(root, out):
    """A real no-audio variant: the same LLM + LoRA, text only, one step."""
    from pathlib import Path

    from mosaic_core.config import load_config
    from recipes.train_alm import train_stage

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "configs/alm/stage3.yaml", [
        f"data.root={root}", f"output_dir={out}", "name=silent", "audio.enabled=false", "trainable.projector=false",
        "train.init_from=null", "train.max_steps=1", "train.batch_size=2", "train.eval_batches=1",
        "train.warmup_ratio=0.0", "prompt.system=''", "train.ckpt_every=0"])
    train_stage(cfg, quiet=True)
    return out / "silent" / "stage3" / "artifact"


def test_eval_alm_scores_captions_with_both_baselines(tiny_alm_artifact, embedded_instructions, tmp_path):
    from eval.alm_benchmark import evaluate_alm

    enc = tiny_alm_artifact / "encoder"
    silent = _no_audio_artifact(embedded_instructions, tmp_path / "na")
    res = evaluate_alm(str(tiny_alm_artifact), str(embedded_instructions), str(tmp_path / "ev"), max_closed=8,
                       max_captions=6, max_classify=4, no_audio_artifact=str(silent), retrieval_encoder=str(enc))
    assert set(res["caption_baselines"]) == {"retrieval", "no_audio"}
    for scores in (res["captioning"], *res["caption_baselines"].values()):
        assert 0.0 <= scores["cider_d"] and 0.0 <= scores["bleu_1"] <= 1.0
    table = res["caption_table"]
    assert len(table) == 6 and all({"id", "references", "prediction", "retrieval", "no_audio"} <= set(r)
                                   for r in table)
    saved = json.loads((tmp_path / "ev" / "alm_eval.json").read_text())
    assert saved["config"]["retrieval_encoder"] == str(enc)
