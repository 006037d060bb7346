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
                                         (["--jobs", "0"], "jobs=0")])
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
