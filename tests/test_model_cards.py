"""Model cards and Auto* loading: every saved encoder folder and ALM artifact carries a generated README.md (Hugging
Face card metadata + architecture, preprocessing, training, results, use, limits), results can be added later, and
both folders load through transformers' AutoConfig / AutoModel once the kit's classes are registered, with no
trust_remote_code."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from encoder.pretraining import PretrainConfig, export_encoder, training_facts
from encoder.vit import AudioMosaicViT, EncoderConfig
from mosaic_core.cards import add_card_results, read_card_results

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("card") / "encoder"
    cfg = PretrainConfig()
    cfg.train.batch_size, cfg.data.manifests = 16, ["keywords/manifest.jsonl"]
    export_encoder(AudioMosaicViT(EncoderConfig(size="tiny", depth=2, target_frames=128, norm_mean=-3.5)), folder,
                   training=training_facts(cfg, steps=7, n_clips=123, world=1))
    return folder


@pytest.fixture(scope="module")
def artifact(encoder_folder, tmp_path_factory):
    from mosaic_alm.artifact import save_artifact
    from mosaic_alm.audio_lm import ALMConfig, AudioLanguageModel

    torch.manual_seed(0)
    cfg = ALMConfig()
    cfg.lora.enabled = True
    cfg.audio.encoder = str(encoder_folder)
    cfg.audio.target_frames = 128
    model = AudioLanguageModel.build(cfg)
    run_cfg = {k: dataclasses.asdict(getattr(cfg, k)) for k in ("llm", "lora", "audio", "projector", "trainable",
                                                                "prompt")}
    run_cfg.update(name="cardtest", stage=2, seed=3, data={"root": "data/embedded-small", "kind": "closed"},
                   train={"batch_size": 4, "grad_accum": 2, "lr": 5e-4, "init_from": None})
    summary = {"steps": 11, "train_records": 321, "first_loss": 2.5, "last_loss": 1.25, "eval_loss": 1.5,
               "train_seconds": 9.5}
    path = tmp_path_factory.mktemp("card") / "artifact"
    save_artifact(model, path, run_cfg, meta={"stage": 2, "seed": 3, "train_summary": summary})
    return path


@pytest.fixture
def own_copy(tmp_path):
    """``own_copy(folder)``: a copy of a module folder for a test that adds results to its card, so the module's
    encoder folder and artifact stay as saved whatever order the tests run in."""
    return lambda folder: Path(shutil.copytree(folder, tmp_path / "copies" / folder.name))


def test_encoder_card_says_what_the_folder_holds(encoder_folder):
    card = ModelCard.load(encoder_folder / "README.md")
    assert card.data.pipeline_tag == "feature-extraction" and "audio" in card.data.tags
    text = card.text
    for fact in ("embed_dim: 192", "depth: 2", "128 mel bins", "25 ms Hann window", "10 ms shift", "(-3.5)",
                 "4.5689974", "128 frames = 1.28 s", "steps: 7", "global batch: 16", "123 clips", "keywords/manifest",
                 "AudioMosaic contrastive", "## Intended use and limits", "AutoModel.from_pretrained",
                 "hear.load_model"):
        assert fact in text, fact
    assert "None recorded yet" in text and not read_card_results(encoder_folder)


def test_results_are_added_to_the_card_and_replace_their_old_values(encoder_folder, own_copy):
    encoder_folder = own_copy(encoder_folder)
    row = {"task": "audio-classification", "task_name": "linear probe (frozen encoder)", "dataset": "embedded_keywords",
           "split": "test", "metric": "accuracy", "value": 0.5, "source": "test run"}
    add_card_results(encoder_folder, [row, dict(row, dataset="embedded_instruments", value=0.25)])
    add_card_results(encoder_folder, [dict(row, value=0.75)])  # same task, dataset, split, metric: replaced
    results = read_card_results(encoder_folder)
    assert sorted((r.dataset_type, r.metric_value) for r in results) == [("embedded_instruments", 0.25),
                                                                         ("embedded_keywords", 0.75)]
    text = (encoder_folder / "README.md").read_text()
    assert "| linear probe (frozen encoder) | embedded_keywords | test | accuracy (test run) | 0.75 |" in text
    assert "None recorded yet" not in text and "model-index" in text and "0.5 |" not in text
    assert text.count("## Measured results") == 1 and text.count("## Preprocessing") == 1


def test_alm_card_names_components_preprocessing_and_training(artifact, encoder_folder):
    card = ModelCard.load(artifact / "README.md")
    assert card.data.pipeline_tag == "audio-text-to-text"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and "lora" in card.data.tags
    for fact in ("cardtest, stage 2", "AudioMosaic tiny (192-d, depth 2)", str(encoder_folder), "r=8, alpha=16",
                 "4 per clip", "(-3.5)", "128 frames = 1.28 s", "optimizer steps: 11", "records: 321",
                 "train loss: 2.500 -> 1.250", "held-out loss: 1.500", "4 x 2 accumulation", "seed: 3",
                 f"mosaic-alm ask --artifact {artifact}", "## Intended use and limits"):
        assert fact in card.text, fact
    enc_card = (artifact / "encoder" / "README.md").read_text()
    assert "its own card has the pretraining facts" in enc_card and "frozen inside the ALM, stage 2" in enc_card
    pre = json.loads((artifact / "meta.json").read_text())["preprocessing"]
    assert pre["norm_mean"] == -3.5 and pre["target_frames"] == 128


AUTO = """
import sys, torch
from transformers import AutoConfig, AutoModel, AutoFeatureExtractor
enc, art = sys.argv[1], sys.argv[2]
try:
    AutoConfig.from_pretrained(enc)
    raise SystemExit("loaded before registration")
except ValueError:
    pass
import encoder.hf  # registration (an encoder's classes: on import)
from encoder.hf import AudioMosaicModel, resolve_encoder
from mosaic_alm.artifact import load_alm, register_alm_auto_classes
register_alm_auto_classes()  # an ALM's: called explicitly (importing the model module registers nothing)
from mosaic_alm.audio_lm import ALMArtifactConfig, AudioLanguageModel
m = AutoModel.from_pretrained(enc)
assert type(m) is AudioMosaicModel and type(AutoConfig.from_pretrained(enc)).__name__ == "AudioMosaicConfig"
ref = resolve_encoder(enc)
assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))
x = AutoFeatureExtractor.from_pretrained(enc)(torch.randn(16000).numpy(), sampling_rate=16000)["input_values"]
assert x.shape == (1, 128, 128) and torch.equal(m(x).pooler_output, ref(x).pooler_output)
conf = AutoConfig.from_pretrained(art)
assert type(conf) is ALMArtifactConfig and conf.alm["lora"]["r"] == 8 and conf.n_audio_tokens == 4
alm = AutoModel.from_pretrained(art)
assert type(alm) is AudioLanguageModel and not alm.training
ref = load_alm(art)
assert all(torch.equal(a, b) for a, b in zip(alm.state_dict().values(), ref.state_dict().values()))
print("auto ok")
"""


def test_encoder_and_alm_load_through_auto_classes_without_remote_code(encoder_folder, artifact):
    out = subprocess.run([sys.executable, "-c", AUTO, str(encoder_folder), str(artifact)], capture_output=True,
                         check=False, text=True, cwd=REPO, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and "auto ok" in out.stdout, out.stderr[-3000:]
    assert "trust_remote_code" not in AUTO.replace("without trust_remote_code", "")


def test_pipeline_puts_probe_and_qa_accuracies_into_the_cards(encoder_folder, artifact, tmp_path, own_copy):
    """The pipeline's hooks read the result structures eval-encoder and alm-experiment write."""
    encoder_folder, artifact = own_copy(encoder_folder), own_copy(artifact)
    from recipes.pipeline import record_probe_results, record_qa_results

    acc = {"accuracy": {"mean": 0.625, "std": 0.0, "runs": [0.625]}}
    results = {"tasks": {"embedded_environment": {
        "mine": {"weighted": {"test": acc, "layer_weights": [0.5, 0.5]}, "linear_by_layer_test": [0.1, 0.2]},
        "mfcc_logreg": {"test": acc}}}}
    record_probe_results(results, {"mine": str(encoder_folder)}, "pipeline test")
    rows = {(r.task_name, r.dataset_type): r.metric_value for r in read_card_results(encoder_folder)}
    assert rows[("weighted probe (frozen encoder)", "embedded_environment")] == 0.625
    qa = {"variants": {"pretrained": {"accuracy": {"overall": {"exact_match": 0.375},
                                                   "per_qtype": {"keyword_word": {"exact_match": 0.25}}}}}}
    (tmp_path / "alm_qa.json").write_text(json.dumps(qa))
    record_qa_results(tmp_path / "alm_qa.json", artifact, "pipeline test")
    rows = {r.dataset_type: r.metric_value for r in read_card_results(artifact)}
    assert rows == {"embedded/all": 0.375, "embedded/keyword_word": 0.25}
    assert "| closed-ended QA, exact match | embedded/keyword_word | test | accuracy (pipeline test) | 0.25 |" in \
        (artifact / "README.md").read_text()
