"""Stage training on real audio (toy tones/noise) with the real SmolLM2: loss goes down, the artifact loads and the
ask / caption CLIs answer from it. The whole four-stage chain runs under --run-slow."""
import json

import pytest
import torch

from mosaic_alm.toy import make_toy_data

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
    from mosaic_alm.featurizer import AudioFeaturizer

    audio = AudioFeaturizer.for_model(model).inputs(b.pop("audios"))
    with torch.no_grad():
        return float(model.eval()(**b, **audio).loss)


def test_stage1_reduces_loss_and_cli_answers(toy, tmp_path, capsys):
    from mosaic_alm.artifact import build_from, load_alm
    from mosaic_alm.generation import caption
    from mosaic_core.config import load_config
    from recipes.infer import main_ask
    from recipes.train_alm import train_stage

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
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2 and lines[0]["answer"] == lines[1]["answer"]


def test_cli_reports_missing_artifact_as_one_line(tmp_path, capsys):
    from recipes.cli import main

    assert main(["ask", "--artifact", str(tmp_path / "nope"), "--audio", "x.wav", "--question", "q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not an ALM artifact" in err


def test_unknown_config_key_is_an_error(toy, tmp_path):
    from mosaic_core.config import ConfigError, load_config
    from recipes.train_alm import train_stage

    with pytest.raises(ConfigError):
        load_config(f"{REPO_CONFIGS}/stage1.yaml", ["train.learning_rate=1"])
    cfg = load_config(f"{REPO_CONFIGS}/stage1.yaml", _overrides(toy, tmp_path))
    cfg["trainable"]["lorra"] = True
    with pytest.raises(ConfigError, match="lorra"):
        train_stage(cfg, quiet=True)


@pytest.mark.slow
def test_four_stage_chain(toy, tmp_path):
    from mosaic_alm.artifact import load_alm
    from mosaic_alm.generation import ask
    from recipes.train_alm import main

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
    from mosaic_alm.artifact import load_alm
    from mosaic_core.config import load_config
    from recipes.train_alm import train_stage

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


def test_experiment_reuses_finished_stages_and_combines_variants(toy, tmp_path, capsys):
    from mosaic_core.config import ConfigError
    from recipes.alm_experiment import main

    common = ["--data", str(toy), "--encoder", "random:tiny", "--max-test", "3", "--variants", "random",
              "--output-dir", str(tmp_path / "runs"), "data.qtypes=null", "prompt.system=''", "train.batch_size=4",
              "train.eval_batches=0"]
    first = tmp_path / "first.json"
    assert main([*common, "--steps", "2,0,0,0", "--out", str(first)]) == 0
    art1 = tmp_path / "runs" / "random" / "stage1" / "artifact"
    stamp = (art1 / "meta.json").stat().st_mtime_ns
    longer = tmp_path / "random.json"
    assert main([*common, "--steps", "2,2,0,0", "--reuse", "--out", str(longer)]) == 0
    res = json.loads(longer.read_text())["variants"]["random"]["stages"]
    assert [s["stage"] for s in res] == [1, 2] and res[0]["reused"] and not res[1]["reused"]
    assert (art1 / "meta.json").stat().st_mtime_ns == stamp  # stage 1 was not trained again
    # the same command again: every stage and the evaluation are skipped
    capsys.readouterr()
    assert main([*common, "--steps", "2,2,0,0", "--reuse", "--out", str(longer)]) == 0
    again = json.loads(longer.read_text())["variants"]["random"]
    assert all(s["reused"] for s in again["stages"]) and again["evaluation_reused"]
    assert capsys.readouterr().out.count("skip") == 3
    # a different stage-1 budget is a different config: it trains again instead of reusing
    assert main([*common, "--steps", "3,0,0,0", "--reuse", "--out", str(tmp_path / "other.json")]) == 0
    assert not json.loads((tmp_path / "other.json").read_text())["variants"]["random"]["stages"][0]["reused"]
    # stage 2's folder holds a run on the 2-step stage 1: on the 3-step one it trains again (config unchanged)
    assert main([*common, "--steps", "3,2,0,0", "--reuse", "--out", str(tmp_path / "chain.json")]) == 0
    chain = json.loads((tmp_path / "chain.json").read_text())["variants"]["random"]["stages"]
    assert [s["reused"] for s in chain] == [True, None]
    # --examples budgets
    assert main([*common, "--examples", "12,8,0,0", "--reuse", "--out", str(tmp_path / "ex.json")]) == 0
    ex = json.loads((tmp_path / "ex.json").read_text())
    assert ex["examples_per_stage"] == [12, 8, 0, 0] and ex["steps_per_stage"] is None
    assert [(s["steps"], s["examples"], s["reused"]) for s in ex["variants"]["random"]["stages"]] == \
        [(3, 12, None), (2, 8, None)]
    with pytest.raises(ConfigError, match="--examples needs four"):
        main([*common, "--examples", "12,8", "--out", str(tmp_path / "bad.json")])

    # combine: another variant of the same experiment merges; a different experiment is refused
    other = json.loads(longer.read_text())
    other["variants"] = {"no_audio": other["variants"].pop("random")}
    (tmp_path / "no_audio.json").write_text(json.dumps(other))
    assert main(["--combine", str(longer), str(tmp_path / "no_audio.json"), "--out", str(tmp_path / "all.json")]) == 0
    assert sorted(json.loads((tmp_path / "all.json").read_text())["variants"]) == ["no_audio", "random"]
    with pytest.raises(SystemExit, match="steps_per_stage"):
        main(["--combine", str(longer), str(tmp_path / "other.json"), "--out", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="more than one file"):
        main(["--combine", str(longer), str(longer), "--out", str(tmp_path / "bad.json")])


def test_stage_length_in_examples_or_steps():
    from mosaic_alm.stage_config import STAGES, StageTrainConfig, check_stage_config
    from mosaic_core.config import ConfigError, load_config

    assert StageTrainConfig(examples=4800, batch_size=16).total_steps(1000) == 300
    assert StageTrainConfig(examples=100, batch_size=8, grad_accum=2).total_steps(1000, world=2) == 4  # ceil(100/32)
    assert StageTrainConfig(max_steps=7).total_steps(1000) == 7
    assert StageTrainConfig(epochs=1.5).total_steps(10) == 15
    cfg = check_stage_config(load_config(STAGES[0], ["train.examples=64"]))
    assert cfg.train.total_steps(1) == 8
    with pytest.raises(ConfigError, match="train.examples .* or train.max_steps"):
        check_stage_config(load_config(STAGES[0], ["train.examples=64", "train.max_steps=3"]))


def test_paired_comparison_of_variants():
    from eval.alm_variants import compare_variants
    from eval.stats import paired_comparison

    def res(flags):
        return {"questions": [{"id": f"q{i}", "qtype": "t", "exact": f, "loglik": f} for i, f in enumerate(flags)]}

    a, b = res([True, True, True, False] * 5), res([False, False, True, False] * 5)
    c = paired_comparison(a, b, "exact")
    assert c["questions"] == 20 and c["difference"] == 0.5 and (c["only_a_right"], c["only_b_right"]) == (10, 0)
    assert c["ci95"][0] > 0.2 and c["ci95"][1] <= 0.75
    assert abs(c["mcnemar_p"] - 2 / 2 ** 10) < 1e-12  # exact binomial: all 10 discordant pairs favour a
    same = paired_comparison(a, a, "loglik")
    assert same["difference"] == 0 and same["mcnemar_p"] == 1.0
    with pytest.raises(ValueError, match="no questions"):
        paired_comparison(a, {"questions": [{"id": "other", "exact": True}]}, "exact")
    both = compare_variants({"variants": {"pretrained": {"accuracy": a}, "random": {"accuracy": b},
                                          "no_audio": {"accuracy": b}}})
    assert set(both) == {"pretrained_vs_random", "pretrained_vs_no_audio"}


def test_projector_gets_its_own_learning_rate():
    from mosaic_alm.stage_config import StageTrainConfig
    from mosaic_alm.stage_optim import alm_param_groups

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.projector = torch.nn.Linear(3, 3)
            self.lora = torch.nn.Linear(3, 3)
            self.frozen = torch.nn.Linear(3, 3).requires_grad_(False)

    m = M()
    one = alm_param_groups(m, StageTrainConfig(lr=1e-4))
    assert len(one) == 1 and one[0]["lr"] == 1e-4 and len(one[0]["params"]) == 4  # frozen parameters left out
    two = alm_param_groups(m, StageTrainConfig(lr=1e-4, projector_lr=1e-3))
    assert [g["lr"] for g in two] == [1e-3, 1e-4]
    assert {id(p) for p in two[0]["params"]} == {id(p) for p in m.projector.parameters()}
    m.projector.requires_grad_(False)  # a stage that freezes the projector: one group at lr
    assert [g["lr"] for g in alm_param_groups(m, StageTrainConfig(lr=1e-4, projector_lr=1e-3))] == [1e-4]
    opt = torch.optim.AdamW(two, lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    assert sched.get_last_lr() == [5e-4, 5e-5]  # the schedule scales both groups


@pytest.mark.parametrize("grouped", [True, False])
def test_budgeted_stage_encodes_only_the_clips_it_reads(toy, tmp_path, monkeypatch, grouped):
    """A stage of 2 steps over a larger split encodes the clips of its 2 batches up front, not every training
    clip (length-grouped batches or not); a budget longer than an epoch reads (and encodes) every record."""
    from mosaic_alm.data import InstructionDataset, PromptFormatter, load_records
    from mosaic_alm.llm import load_tokenizer
    from mosaic_alm.stage_data import epoch_batches, planned_records
    from mosaic_core.config import load_config
    from recipes.train_alm import train_stage

    monkeypatch.setenv("MOSAIC_ALM_TOKEN_CACHE", str(tmp_path / "cache"))
    over = _overrides(toy, tmp_path, steps=2) + ["train.eval_batches=0", "projector.standardize=false",
                                                  "data.qtypes=null", f"train.group_by_length={str(grouped).lower()}"]
    cfg = load_config(f"{REPO_CONFIGS}/stage1.yaml", over)
    recs = load_records(toy, "train", None, cfg["data"]["kind"], 0, cfg["seed"], None)  # as train_stage reads them
    fmt = PromptFormatter(load_tokenizer(), 8, system="")  # random:tiny at 256 frames: 8 slots
    lengths = InstructionDataset(recs, fmt).lengths() if grouped else None
    read = {recs[i]["audio_path"] for b in epoch_batches(len(recs), 4, cfg["seed"], 0, lengths=lengths)[:2]
            for i in b}
    every = {r["audio_path"] for r in recs}
    assert len(read) < len(every)
    assert train_stage(cfg, quiet=True)["clips_encoded"] == len(read)

    assert planned_records(10, 4, 0, 3) == set(range(10))  # one epoch is 3 batches
    two = planned_records(50, 4, 0, 20, world=2)  # both ranks' batches, across the epoch boundary (7 a rank)
    want = {i for r in (0, 1) for e, k in ((0, 7), (1, 7), (2, 6)) for b in epoch_batches(50, 4, 0, e, r, 2)[:k]
            for i in b}
    assert two == want


def test_length_grouped_batches():
    """Length-grouped batches: every record once an epoch, the same plan from the same (seed, epoch), another
    from another epoch, far less padding than random batches, and without lengths the plain permutation."""
    from mosaic_alm.stage_data import epoch_batches

    g = torch.Generator().manual_seed(1)
    lengths = [44 if x < 0.4 else 80 + int(x * 5) for x in torch.rand(500, generator=g).tolist()]
    plan = epoch_batches(500, 8, 0, 0, lengths=lengths)
    assert sorted(i for b in plan for i in b) == list(range(500))
    assert plan == epoch_batches(500, 8, 0, 0, lengths=lengths) != epoch_batches(500, 8, 0, 1, lengths=lengths)

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    plain = epoch_batches(500, 8, 0, 0)
    assert padded(plan) < 0.9 * padded(plain)
    assert padded(plan) < 1.05 * sum(lengths)
    g = torch.Generator().manual_seed(0)
    assert [i for b in plain for i in b] == torch.randperm(500, generator=g).tolist()
    two = [epoch_batches(500, 8, 0, 0, r, 2, lengths) for r in (0, 1)]  # two ranks: disjoint, every record
    assert len(two[0]) == len(two[1]) and sorted(i for p in two for b in p for i in b) == list(range(500))
