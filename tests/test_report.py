"""``mosaic-alm report``: one self-contained report.html of a run folder, rendered in headless Chromium: every image
and audio player loads, the console stays clean, nothing is fetched from outside the file."""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from chromium import Chromium

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_folder(embedded_instructions, tiny_alm_artifact, tmp_path_factory) -> Path:
    """A pipeline-shaped run folder from tiny real pieces: both pretraining objectives (2 steps), the encoder
    evaluation on one task, the tiny ALM artifact as the pretrained variant, the committed results of a real ALM
    ablation run (results/alm_qa.json), and the measured times in pipeline.json. (The ALM evaluation, a minute
    of generation and Java, is added by the slow test.)"""
    from encoder.pretraining import PretrainConfig
    from mosaic_core.config import load_config, load_recipe, parse_config
    from mosaic_core.io import atomic_write_json
    from recipes.eval_encoder import EncoderEvalConfig, evaluate
    from recipes.pretrain import train

    embedded_root = embedded_instructions  # the report's gallery reads its instructions/test.json
    run = tmp_path_factory.mktemp("run")
    timings = {}
    for name, objective in (("audiomosaic", "contrastive"), ("mae", "mae")):
        t = time.time()
        raw = load_config(REPO / "configs/pretrain/tiny.yaml", [
            f"data.root={embedded_root}", "data.shards=null", f"run_dir={run / f'pretrain-{name}'}",
            "train.max_steps=2",
            f"objective={objective}", "train.progress=false", "train.batch_size=8",
            "data.manifests=[keywords/manifest.jsonl]", "data.cached_features=false"])
        train(parse_config(PretrainConfig, raw, "pretraining config"), raw)
        timings[f"pretrain_{name}_s"] = round(time.time() - t, 1)
    t = time.time()
    cfg, _ = load_recipe(EncoderEvalConfig, REPO / "configs/eval/encoder_embedded.yaml", [
        f"data_root={embedded_root}", f"run_dir={run / 'eval-encoder'}", "probe_seeds=[0]", "probe.epochs=1",
        "max_clips_per_split=12", "probes=[linear]",
        f"encoders={{audiomosaic: {run / 'pretrain-audiomosaic/encoder'}, random: random}}",
        f"tasks=[{REPO / 'configs/data/embedded_keywords.yaml'}]"])
    evaluate(cfg)
    timings["eval_encoder_s"] = round(time.time() - t, 1)
    shutil.copytree(tiny_alm_artifact, run / "alm" / "pretrained" / "stage1" / "artifact")
    shutil.copy(REPO / "results" / "alm_qa.json", run / "alm_qa.json")
    atomic_write_json(run / "pipeline.json", {"args": {}, "data_root": str(embedded_root), "timings": timings})
    return run


def _render_and_check(run: Path, clips: int, images: int) -> str:
    """Build the report with the CLI, check it is self-contained, render it in Chromium: every image and audio
    player loads and the console shows no errors. Returns the page's HTML."""
    from recipes.cli import main

    assert main(["report", str(run), "--clips", str(clips), "--max-new-tokens", "4"]) == 0
    text = (run / "report.html").read_text()
    # self-contained: every src/href is an inline data URI (or an in-page anchor)
    refs = re.findall(r'\b(?:src|href)\s*=\s*["\']([^"\']*)', text)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), [r[:60] for r in refs if
                                                                      not r.startswith("data:")]
    for heading in ("Pretraining loss curves", "Probe accuracy by layer", "Confusion matrices",
                    "accuracy per question type", "Captioning", "Wall time per stage", "Gallery of test clips"):
        assert heading in text, heading
    with Chromium() as browser:
        browser.open((run / "report.html").as_uri())
        media = browser.media()
        errors = browser.errors()
        gallery = browser.eval("[...document.querySelectorAll('.clip')].map(c => c.innerText)")
    assert len(media["images"]) == images, media["images"]
    assert all(i["width"] > 0 for i in media["images"]), media["images"]
    assert len(media["audio"]) == clips
    assert all(a["error"] is None and a["ready"] >= 1 and a["duration"] > 0 for a in media["audio"]), media["audio"]
    assert errors == []
    assert len(gallery) == clips and all("model answer" in g and "reference answer" in g for g in gallery)
    return text


def test_report_renders_in_chromium(run_folder):
    text = _render_and_check(run_folder, clips=3, images=8)
    # images: pretraining 1, few-label curve 1, layer sweep 1, confusion matrix 1 (first encoder), ALM bars 1,
    # 3 gallery clips
    assert 'alt="Few labels"' in text and "labelled training clips per class" in text
    assert "Pretraining read the labelled tasks&#x27; train splits (keywords/manifest.jsonl)" in text
    assert text.count("Not in this run") == 1 and "Not in this run: eval-alm/alm_eval.json" in text
    qa = json.loads((REPO / "results" / "alm_qa.json").read_text())["variants"]
    assert f"{qa['pretrained']['accuracy']['overall']['exact_match']:.3f} [" in text  # with its interval


@pytest.mark.slow
def test_report_with_the_alm_evaluation(run_folder, embedded_root, tmp_path):
    from eval.alm_benchmark import evaluate_alm

    run_folder = Path(shutil.copytree(run_folder, tmp_path / "run"))  # the module's folder stays without eval-alm
    art = run_folder / "alm" / "pretrained" / "stage1" / "artifact"
    evaluate_alm(str(art), str(embedded_root), str(run_folder / "eval-alm"), max_closed=4, max_captions=2,
                 max_classify=2)
    text = _render_and_check(run_folder, clips=8, images=13)
    assert "Not in this run" not in text
    ev = json.loads((run_folder / "eval-alm" / "alm_eval.json").read_text())["numbers"]
    assert f"{ev['captioning']['cider_d']:.4f}" in text


def test_report_of_an_empty_folder_names_what_is_missing(tmp_path):
    from eval.run_report import build_report

    page = build_report(tmp_path)
    text = page.read_text()
    assert text.count("Not in this run") == 6 and "<img" not in text and "<audio" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # one file, nothing else written


def test_report_of_a_missing_folder_is_one_line(tmp_path, capsys):
    from recipes.cli import main

    assert main(["report", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such run folder" in err


def _visible(page: str) -> str:
    """The page's text as a reader sees it (tags, styles and data URIs dropped; cells separated by " | ")."""
    import html as html_lib

    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    page = re.sub(r"</t[dh]>", " | ", page)
    page = re.sub(r"</(?:tr|p|h\d)>", "\n", page)
    return html_lib.unescape(re.sub(r"<[^>]+>", "", page))


@pytest.fixture
def recorded_run(tmp_path) -> Path:
    """A pipeline-layout run folder made of the committed JSONs of a real default run (results/pipeline_b256: one
    probe seed, the MAE baseline alongside the contrastive pretraining, the ALM evaluation within the ALM stage),
    with the fields a current pipeline records added (precision; the machine write_results records), and one probe
    given three seeds."""
    src = REPO / "results" / "pipeline_b256"
    pipe = json.loads((src / "pipeline.json").read_text())
    pipe["precision"] = "bf16 autocast on cpu (native avx512_bf16)"
    enc = json.loads((src / "encoder_eval.json").read_text())
    enc["machine"] = {"cpu": "AMD EPYC 9R14", "cores": 2, "usable_cores": 2, "arch": "x86_64"}
    enc["numbers"]["tasks"]["embedded_keywords"]["mae"]["attentive"]["test"]["accuracy"] = {
        "mean": 0.85, "std": 0.05, "runs": [0.8, 0.85, 0.9]}
    for rel, doc in (("pipeline.json", pipe), ("eval-encoder/encoder_eval.json", enc),
                     ("eval-alm/alm_eval.json", json.loads((src / "alm_eval.json").read_text())),
                     ("alm_qa.json", json.loads((src / "alm_qa.json").read_text()))):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(doc))
    return tmp_path


def test_report_shows_only_what_was_measured(recorded_run):
    from eval.run_report import build_report

    text = _visible(build_report(recorded_run, data=recorded_run / "no-data", use_model=False).read_text())
    # one seed: no spread of zero; several: mean ± std with n
    assert "± 0.000" not in text and "0.811 (1 seed)" in text
    assert "0.850 ± 0.050 (n=3)" in text
    # nothing unmeasured printed as a value (old: "steps per stage None.", "spice | —")
    assert not re.search(r"\b(?:None|null|nan|NaN)\b", text), re.findall(r".{40}\b(?:None|null|nan)\b.{20}", text)
    assert "spice |" not in text and "SPICE not computed" in text
    assert "pretrained | 3 | 188 | 1504 |" in text  # what each variant trained, from its stage's result
    assert "one training seed (seed 0)" in text


def test_report_counts_an_alongside_stage_once(recorded_run):
    from eval.run_report import build_report

    text = _visible(build_report(recorded_run, data=recorded_run / "no-data", use_model=False).read_text())
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in text.splitlines() if " | " in line}
    # the MAE baseline trained 148.65 s in its own process beside the contrastive run (old row: 0.0 s)
    assert rows["pretrain_mae"][:3] == ["148.7", "2.5", "0.0"] and "alongside pretrain_audiomosaic" in \
        rows["pretrain_mae"][3]
    # the ALM evaluation ran within the ALM stage: its own time, not added again (old total: 968.3 s)
    assert rows["eval_alm"][:3] == ["34.7", "0.6", "in alm"] and "within alm" in rows["eval_alm"][3]
    assert rows["total"][:3] == ["933.6", "15.6", "933.6"] and "968.3" not in text
    pipe = json.loads((recorded_run / "pipeline.json").read_text())
    assert float(rows["total"][0]) == pipe["total_seconds_when_ran"]


def test_report_header_names_commit_machine_precision_and_wall_time(recorded_run):
    from eval.run_report import build_report

    text = _visible(build_report(recorded_run, data=recorded_run / "no-data", use_model=False).read_text())
    header = text.split("Pretraining loss curves")[0]
    assert "commit | 69844393090e8d0073c2e98134295b2b04fdd780 (recorded in encoder_eval.json, alm_eval.json, " \
           "alm_qa.json)" in header
    assert "machine | AMD EPYC 9R14, 2 cores, x86_64" in header
    assert "precision | bf16 autocast on cpu (native avx512_bf16)" in header
    assert "wall time | 15.6 min (934 s)" in header
    assert "budget |" not in header  # a run from before budgets: nothing invented

    pipe = json.loads((recorded_run / "pipeline.json").read_text())
    pipe["expected"] = {"minutes": 28.0}
    pipe["budget"] = {"scale": 0.6, "note": "the ALM budget scaled to 0.60: the full one is predicted to take 38 min "
                                            "at 175 GFLOP/s, over the 28-minute target: ALM examples 0,0,904,0, "
                                            "alignment steps 600"}
    (recorded_run / "pipeline.json").write_text(json.dumps(pipe))
    text = _visible(build_report(recorded_run, data=recorded_run / "no-data", use_model=False).read_text())
    assert ("budget | the ALM budget scaled to 0.60: the full one is predicted to take 38 min at 175 GFLOP/s, over "
            "the 28-minute target: ALM examples 0,0,904,0, alignment steps 600 (expected 28.0 min, measured above)"
            ) in text.split("Pretraining loss curves")[0]


def test_report_of_a_committed_results_folder_says_what_it_lacks(tmp_path):
    """A committed results folder keeps the JSONs flat and predates the precision and machine fields: the report
    reads them, and says "not recorded" where the run recorded nothing."""
    from eval.run_report import build_report

    for f in (REPO / "results" / "pipeline_fp32").glob("*.json"):
        shutil.copy(f, tmp_path / f.name)
    text = _visible(build_report(tmp_path, data=tmp_path / "no-data", use_model=False).read_text())
    header = text.split("Pretraining loss curves")[0]
    assert "commit | 85ac61bd4bf0392c82159918e3d43160c6f4d1ec" in header
    assert "machine | x86_64; CPU model and cores not recorded" in header
    assert "precision | not recorded" in header and "wall time | 47.5 min (2852 s)" in header
    assert "mae / attentive | 0." in text and "± 0.000" not in text and "1 seed" in text
