"""An imported release is an encoder like any other: a small ALM stage end to end on the embedded data with it as
the ear (tokens cached, then asked and captioned through the artifact), the encoder evaluation, fine-tuning (from
the imported folder and from the released folder as it is) and its preprocessing constants in every one of them.
The HEAR API runs on one in tests/test_hear.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from encoder.hf import AudioMosaicConfig, import_release
from mosaic_core.config import load_config, load_recipe

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "audiomosaic"


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """The reference's pretrain class (learned positions, un-normalised tokens, CLS-inclusive pooling; 256 frames,
    AudioSet constants) written as a kit folder."""
    return import_release(FIX / "pretrained" / "hub", tmp_path_factory.mktemp("release") / "encoder")


def test_alm_stage_with_an_imported_encoder(imported, embedded_instructions, tmp_path, monkeypatch):
    from mosaic_alm.artifact import load_alm
    from mosaic_alm.generation import ask
    from recipes.train_alm import train_stage

    monkeypatch.setenv("MOSAIC_ALM_TOKEN_CACHE", str(tmp_path / "token-cache"))
    cfg = load_config(REPO / "configs/alm/stage1.yaml", [
        f"data.root={embedded_instructions}", f"output_dir={tmp_path}", "name=paper", f"audio.encoder={imported}",
        "audio.target_frames=0",
        "train.max_steps=2", "train.batch_size=2", "projector.stats_clips=8", "train.eval_batches=1",
        "train.warmup_ratio=0.0", "prompt.system=''", "train.ckpt_every=0", "data.qtypes=[keyword_word]"])
    torch.manual_seed(0)
    res = train_stage(cfg, quiet=True)
    assert len(res["step_losses"]) == 2 and all(v == v and v > 0 for v in res["step_losses"])
    assert any((tmp_path / "token-cache").rglob("*.safetensors")), "the imported encoder's tokens were not cached"
    art = tmp_path / "paper" / "stage1" / "artifact"
    enc_cfg = AudioMosaicConfig.from_pretrained(str(art / "encoder"))
    assert enc_cfg.positions == "learned" and enc_cfg.pooling == "all" and not enc_cfg.token_norm
    assert enc_cfg.norm_mean == pytest.approx(-4.2677393) and enc_cfg.source["class"] == "AudioMosaicPretrain"
    model = load_alm(art)
    assert model.cfg.audio.target_frames == 256  # 0 = the imported encoder's own input length
    clip = json.loads((embedded_instructions / "instructions" / "test.json").read_text())[0]["audio_path"]
    answer = ask(model, [str(embedded_instructions / clip)], "Which word is spoken?", 1, 4)
    assert isinstance(answer[0] if isinstance(answer, list) else answer, str)


def test_eval_encoder_with_an_imported_encoder(imported, embedded_root, tmp_path):
    from recipes.eval_encoder import EncoderEvalConfig, evaluate

    cfg, _ = load_recipe(EncoderEvalConfig, REPO / "configs/eval/encoder_embedded.yaml", [
        f"data_root={embedded_root}", f"run_dir={tmp_path / 'run'}", f"encoders={{paper: {imported}}}",
        "probe_seeds=[0]", "probe.epochs=2", "max_clips_per_split=24", "tasks=[configs/data/embedded_keywords.yaml]"])
    evaluate(cfg)
    kw = json.loads((tmp_path / "run/encoder_eval.json").read_text())["numbers"]["tasks"]["embedded_keywords"]
    assert 0.0 <= kw["paper"]["linear"]["test"]["accuracy"]["mean"] <= 1.0
    assert len(kw["paper"]["linear_by_layer_test"]) == 3  # embeddings + 2 blocks


@pytest.mark.parametrize("source", ["imported", "released"])
def test_finetune_from_an_imported_or_released_encoder(source, imported, tmp_path):
    import recipes.finetune as FT
    from mosaic_core.config import parse_config
    from tests.test_finetune import _cfg, _write_task

    recipe = _write_task(tmp_path / "data", "single", per_class=(4, 2, 2))
    enc = str(imported) if source == "imported" else str(FIX / "classifier_esc" / "hub")
    raw = _cfg(tmp_path, recipe, model={"encoder": enc, "size": "tiny", "depth": 0, "drop_path": 0.0,
                                        "head_init_std": 0.02}, optim={"epochs": 1})
    out = FT.finetune(parse_config(FT.FinetuneConfig, raw), raw)
    assert 0.0 <= out["test"]["test"]["accuracy"] <= 1.0
