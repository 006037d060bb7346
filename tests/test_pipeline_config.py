"""The pipeline's settings: configs/pipeline/*.yaml read once into the checked PipelineConfig, the command line's
options over it (the same command gives the same run), one-line refusals; and the run-folder layout's one home."""
from __future__ import annotations

from pathlib import Path

import pytest

from mosaic_core.config import ConfigError
from mosaic_core.run_layout import RunLayout
from recipes.pipeline import load_pipeline_config

DEFAULT_ALM_RECIPE = ["train.lr=3e-4", "train.projector_lr=1e-4", "projector.kind=attentive", "train.align_steps=1000",
                      "train.align_batch=128", "train.copy_warmup=0.5", "data.balance=qtype"]


def test_default_preset_holds_the_values_the_python_presets_held():
    cfg = load_pipeline_config([])
    assert (cfg.preset, cfg.profile, cfg.out, cfg.seed, cfg.jobs, cfg.data_root) == \
        ("default", "full", "runs/pipeline", 0, 2, None)
    assert (cfg.pretrain_steps, cfg.probe_seeds, cfg.probes, cfg.probe_epochs, cfg.max_clips) == \
        (150, [0], ["linear", "attentive"], 15, 0)
    assert (cfg.alm_examples, cfg.alm_steps, cfg.alm_test) == ([0, 0, 1500, 0], None, 120)
    assert (cfg.alm_eval.closed, cfg.alm_eval.captions, cfg.alm_eval.classify) == (60, 20, 20)
    assert cfg.alm_recipe == DEFAULT_ALM_RECIPE and cfg.alm_stage_overrides == DEFAULT_ALM_RECIPE
    assert cfg.alm_variants == ["pretrained", "random", "no_audio"] and not cfg.skip_alm
    assert cfg.alm_budget() == ("train.examples", [0, 0, 1500, 0])


def test_both_pretrainings_read_the_unlabeled_corpus_by_default(tmp_path):
    from recipes.pipeline import PipelineRun

    cfg = load_pipeline_config(["--out", str(tmp_path / "run")])
    assert (cfg.pretrain_data, cfg.corpus_clips) == ("corpus", 0)
    run = PipelineRun(cfg)
    assert run.corpus_clips == 150 * 256  # steps x batch: one pass without repeats
    for name, objective in (("audiomosaic", "contrastive"), ("mae", "mae")):
        assert f"data.shards={run.root / 'unlabeled'}" in run.pretrain_overrides(name, objective)
    run = PipelineRun(load_pipeline_config(["--out", str(tmp_path / "r2"), "--pretrain-steps", "10",
                                            "--corpus-clips", "5000"]))
    assert run.corpus_clips == 5000
    run = PipelineRun(load_pipeline_config(["--out", str(tmp_path / "r3"), "--pretrain-data", "labeled"]))
    assert run.corpus_clips == 0 and "data.shards=null" in run.pretrain_overrides("audiomosaic", "contrastive")
    assert load_pipeline_config(["--preset", "long"]).corpus_clips == 60000


def test_the_expected_duration_counts_the_corpus():
    """Building the corpus and streaming it costs time the model adds (a-terms measured in pipeline_corpus)."""
    from mosaic_core.budget import DEFAULT_COSTS, job_seconds, predict_seconds, with_corpus
    from recipes.pipeline import corpus_clips

    assert corpus_clips(load_pipeline_config([])) == (38400, 38400)
    assert corpus_clips(load_pipeline_config(["--pretrain-data", "labeled"])) == (0, 0)
    assert corpus_clips(load_pipeline_config(["--preset", "long"])) == (60000, 600 * 256)
    assert with_corpus(DEFAULT_COSTS, 0, 0) is DEFAULT_COSTS
    costs = with_corpus(DEFAULT_COSTS, 38400, 38400)
    before, after = job_seconds(DEFAULT_COSTS, 398.0), job_seconds(costs, 398.0)
    assert after["data"] - before["data"] == pytest.approx(156.0)
    assert after["pretrain_audiomosaic"] - before["pretrain_audiomosaic"] == pytest.approx(115.2)
    assert after["pretrained"] == before["pretrained"] and DEFAULT_COSTS["jobs"]["data"]["a"] == 48.5  # a copy
    assert predict_seconds(costs, 398.0) > predict_seconds(DEFAULT_COSTS, 398.0) + 156


def test_long_preset():
    cfg = load_pipeline_config(["--preset", "long"])
    assert (cfg.preset, cfg.pretrain_steps, cfg.probe_seeds, cfg.probes, cfg.probe_epochs) == \
        ("long", 600, [0, 1, 2], ["linear", "weighted", "attentive"], 60)
    assert (cfg.alm_examples, cfg.alm_test, cfg.alm_recipe) == ([4800, 1600, 3200, 960], 360, [])
    assert (cfg.alm_eval.closed, cfg.alm_eval.captions, cfg.alm_eval.classify) == (200, 60, 40)


def test_command_line_options_override_the_yaml():
    cfg = load_pipeline_config(["--pretrain-steps", "2", "--probe-seeds", "0,1", "--probes", "linear",
                                "--alm-steps", "1,1,1,1", "--alm-eval", "2,1,1", "--skip-alm", "--jobs", "1",
                                "--out", "x", "--data-root", "d", "train.batch_size=2"])
    assert (cfg.pretrain_steps, cfg.probe_seeds, cfg.probes, cfg.jobs, cfg.out, cfg.data_root, cfg.skip_alm) == \
        (2, [0, 1], ["linear"], 1, "x", "d", True)
    assert cfg.alm_examples is None and cfg.alm_budget() == ("train.max_steps", [1, 1, 1, 1])  # steps given
    assert cfg.alm_stage_overrides == [*DEFAULT_ALM_RECIPE, "train.batch_size=2"]  # the user's come last
    assert (cfg.alm_eval.closed, cfg.alm_eval.captions, cfg.alm_eval.classify) == (2, 1, 1)


@pytest.mark.parametrize("argv,expect", [(["--alm-examples", "1,2"], "--alm-examples needs four"),
                                         (["--alm-eval", "1,2"], "--alm-eval needs three"),
                                         (["--alm-variants", "big"], "unknown ['big']"),
                                         (["--probes", "lineal"], "probes"),
                                         (["--jobs", "0"], "jobs=0"),
                                         (["--budget-scale", "0"], "budget_scale must be in (0, 1]"),
                                         (["--budget-scale", "1.5"], "budget_scale")])
def test_bad_settings_are_one_line_refusals(argv, expect):
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(argv)
    assert expect in str(err.value) and "\n" not in str(err.value)


def test_run_layout_names_every_file_of_a_run_folder(tmp_path):
    out = RunLayout(tmp_path)
    assert out.encoder("audiomosaic") == tmp_path / "pretrain-audiomosaic" / "encoder"
    assert out.encoder_eval_json == tmp_path / "eval-encoder" / "encoder_eval.json"
    assert out.alm_qa_variant("random") == tmp_path / "alm_qa_random.json" and out.alm_qa == tmp_path / "alm_qa.json"
    assert out.alm_eval_json == tmp_path / "eval-alm" / "alm_eval.json"
    assert (out.pipeline_json, out.report_html) == (tmp_path / "pipeline.json", tmp_path / "report.html")
    assert out.alm_log("no_audio") == Path(tmp_path) / "alm" / "no_audio.log"


def test_budget_is_sized_from_the_measured_throughput():
    """budget auto: the full ALM budget where the schedule with the fitted job costs is predicted to fit the target,
    a smaller one where it does not (the largest that fits, never under the floor); the scaled config multiplies
    every stage's examples (a multiple of the batch of 8) and keeps the alignment steps."""
    from mosaic_core.budget import job_seconds, predict_seconds, scaled_count, size_budget

    cfg = load_pipeline_config([])
    assert (cfg.budget, cfg.target_minutes, cfg.budget_floor, cfg.budget_scale) == ("full", 28.0, 0.6, None)
    cfg = load_pipeline_config(["--budget", "auto"])
    assert load_pipeline_config(["--preset", "long"]).budget == "full"
    # two cores; the ALM variants' training (sa + sb / G) is what the scale multiplies
    costs = {"source": "test", "jobs": {"data": {"a": 100.0, "b": 0.0}, "pretrain_audiomosaic": {"a": 0, "b": 60_000},
                                       "pretrain_mae": {"a": 0, "b": 30_000}, "eval_encoder": {"a": 0, "b": 40_000},
                                       "pretrained": {"a": 0, "b": 20_000, "sa": 0, "sb": 100_000},
                                       "random": {"a": 0, "b": 20_000, "sa": 0, "sb": 100_000},
                                       "no_audio": {"a": 0, "b": 10_000, "sa": 0, "sb": 50_000},
                                       "eval_alm": {"a": 0, "b": 10_000}}}
    assert job_seconds(costs, 100.0, 0.5)["pretrained"] == 700.0
    # at G 100: data 100; contrastive 100-700 beside MAE 100-400, no audio 400-1000; pretrained 700-1900, random
    # 1000-2200, the ALM evaluation 1900-2000 (no audio done), the encoder evaluation 2000-2400
    assert predict_seconds(costs, 100.0) == pytest.approx(2400.0)
    assert predict_seconds(costs, 100.0, 0.5) < predict_seconds(costs, 100.0)
    fast = size_budget(1000.0, 28, 0.35, costs)
    assert fast["scale"] == 1.0 and fast["predicted_minutes"] == fast["predicted_minutes_full"] < 28
    mid = size_budget(100.0, 38, 0.35, costs)  # 40 min at the full budget
    assert 0.35 < mid["scale"] < 1 and mid["predicted_minutes"] <= 38
    assert predict_seconds(costs, 100.0, mid["scale"] + 0.01) > 38 * 60  # the largest scale that fits
    slow = size_budget(20.0, 28, 0.35, costs)  # even the floor is predicted over the target: said so
    assert slow["scale"] == 0.35 and slow["predicted_minutes"] > 28 and "floor" in slow["why"]
    small = cfg.scaled(0.5)
    assert small.alm_examples == [0, 0, 752, 0] and small.alm_recipe == cfg.alm_recipe  # the alignment is kept
    assert cfg.scaled(1.0) is cfg and scaled_count(0, 0.5, 8) == 0 and scaled_count(3, 0.1, 8) == 8
    mine = load_pipeline_config(["train.align_steps=700"]).scaled(0.5)
    assert mine.alm_stage_overrides[-1] == "train.align_steps=700"  # the command line's value wins, unscaled


def test_a_rerun_keeps_the_budget_its_run_folder_started_with(tmp_path):
    import json

    from mosaic_core.config import to_plain
    from recipes.pipeline import _expected_duration

    cfg = load_pipeline_config(["--out", str(tmp_path), "--budget", "auto"])
    expected, plan = _expected_duration(cfg)
    assert expected["matmul_gflops"] > 0 and plan["settings"] == to_plain(cfg)
    kept = dict(plan, scale=0.123, why="measured before")  # below the floor: never what this machine would pick
    (tmp_path / "pipeline.json").write_text(json.dumps({"budget": kept}))
    _, again = _expected_duration(cfg)
    assert again["scale"] == 0.123 and "this run folder started with" in again["why"]
    assert again["alm_examples"] == [0, 0, 192, 0] and again["align_steps"] == 1000
    other = load_pipeline_config(["--out", str(tmp_path), "--budget", "auto", "--seed", "1"])  # sized afresh
    assert "this run folder started with" not in _expected_duration(other)[1]["why"]
    hand = load_pipeline_config(["--out", str(tmp_path / "h"), "--budget-scale", "0.5"])
    assert _expected_duration(hand)[1]["scale"] == 0.5 and "by hand" in _expected_duration(hand)[1]["why"]
