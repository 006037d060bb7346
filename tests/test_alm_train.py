"""Stage training on real audio (toy tones/noise) with the real SmolLM2: loss goes down, the artifact loads and the
ask / caption CLIs answer from it. The whole four-stage chain runs under --run-slow."""
import json

import pytest
import torch

from mosaic_alm.experiment import make_toy_data

REPO_CONFIGS = "configs/alm"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("toy"), per_class={"train": 4, "valid": 1, "test": 1})


def _overrides(toy, out, steps=6):
    return [f"data.root={toy}", f"output_dir={out}", "name=t", "audio.encoder=random:tiny", f"train.max_steps={steps}",
            "train.batch_size=4", "prompt.system=''", "data.qtypes=[sound_event]", "train.eval_batches=1",
            "train.warmup_ratio=0.0"]


def _fixed_batch_loss(model, toy):
    from mosaic_alm.data import Collator, InstructionDataset, PromptFormatter, load_records

    recs = load_records(toy, "train", kind="closed")[:6]
    b = Collator(model.tokenizer.pad_token_id)([InstructionDataset(recs, PromptFormatter.for_model(model))[i]
                                                for i in range(len(recs))])
    with torch.no_grad():
        return float(model.eval()(**b).loss)


def test_stage1_reduces_loss_and_cli_answers(toy, tmp_path, capsys):
    from encoder.config import load_config
    from mosaic_alm.artifact import build_from, load_alm
    from mosaic_alm.infer import caption, main_ask
    from mosaic_alm.train import train_stage

    cfg = load_config(f"{REPO_CONFIGS}/stage1.yaml", _overrides(toy, tmp_path))
    torch.manual_seed(cfg["seed"])
    before = _fixed_batch_loss(build_from(cfg), toy)  # same seed -> same initial projector as train_stage's
    summary = train_stage(cfg, quiet=True)
    assert summary["steps"] == 6 and summary["parameters"]["lora"]["total"] == 0
    art = tmp_path / "t" / "stage1" / "artifact"
    assert (tmp_path / "t" / "stage1" / "config.yaml").is_file() and list((tmp_path / "t" / "stage1" / "tb").iterdir())
    trained = load_alm(art)
    after = _fixed_batch_loss(trained, toy)
    assert after < before - 0.1, (before, after)
    clip = str(toy / "clips" / "test_beep_0.wav")
    cap = caption(trained, clip, max_new_tokens=4)
    assert isinstance(cap, str) and cap

    capsys.readouterr()
    assert main_ask(["--artifact", str(art), "--audio", clip, clip, "--question", "Which sound is heard?", "--json",
                     "--max-new-tokens", "4"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2 and lines[0]["answer"] == lines[1]["answer"]


def test_cli_reports_missing_artifact_as_one_line(tmp_path, capsys):
    from mosaic_alm.cli import main

    assert main(["ask", "--artifact", str(tmp_path / "nope"), "--audio", "x.wav", "--question", "q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not an ALM artifact" in err


def test_unknown_config_key_is_an_error(toy, tmp_path):
    from encoder.config import ConfigError, load_config
    from mosaic_alm.train import train_stage

    with pytest.raises(ConfigError):
        load_config(f"{REPO_CONFIGS}/stage1.yaml", ["train.learning_rate=1"])
    cfg = load_config(f"{REPO_CONFIGS}/stage1.yaml", _overrides(toy, tmp_path))
    cfg["trainable"]["lorra"] = True
    with pytest.raises(ConfigError, match="lorra"):
        train_stage(cfg, quiet=True)


@pytest.mark.slow
def test_four_stage_chain(toy, tmp_path):
    from mosaic_alm.artifact import load_alm
    from mosaic_alm.infer import ask
    from mosaic_alm.train import main

    assert main(["--all", *_overrides(toy, tmp_path, steps=2), "data.qtypes=null"]) == 0
    for s in (1, 2, 3, 4):
        summary = json.loads((tmp_path / "t" / f"stage{s}" / "summary.json").read_text())
        assert summary["steps"] == 2
        if s > 1:
            assert summary["init_from"].endswith(f"stage{s - 1}/artifact")
            assert summary["parameters"]["lora"]["trainable"] > 0
    model = load_alm(tmp_path / "t" / "stage4" / "artifact")
    assert model.cfg.lora.enabled and isinstance(ask(model, str(toy / "clips" / "test_hum_0.wav"), "Which?"), str)


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_zero_single_process(toy, tmp_path, zero, monkeypatch):
    """One process through the DeepSpeed engine (ZeRO 2 / 3 on CPU, gloo): trains, and the ZeRO-3 aware save writes
    an artifact that loads."""
    pytest.importorskip("deepspeed")
    from encoder.config import load_config
    from mosaic_alm.artifact import load_alm
    from mosaic_alm.train import train_stage

    monkeypatch.setenv("MASTER_PORT", str(29600 + zero))
    cfg = load_config(f"{REPO_CONFIGS}/stage2.yaml", _overrides(toy, tmp_path, steps=2)
                      + [f"train.deepspeed=configs/deepspeed/alm_zero{zero}.json", "train.init_from=null"])
    summary = train_stage(cfg, quiet=True)
    assert summary["steps"] == 2
    model = load_alm(tmp_path / "t" / "stage2" / "artifact")
    assert model.cfg.lora.enabled and model.projector is not None


@pytest.mark.slow
def test_llm_4bit_loads_and_generates():
    pytest.importorskip("bitsandbytes")
    from mosaic_alm.llm import LLMConfig, load_llm

    model, tok = load_llm(LLMConfig(quantization="4bit"))
    assert any("4bit" in type(m).__name__ for m in model.modules())
    ids = tok("Hello", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 2
