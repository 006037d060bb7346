"""Recipe: the whole pipeline at tiny scale on the embedded default, one command:

    mosaic-alm pipeline [--preset default|long] [--profile full|small] [--out runs/pipeline]
                        [--alm-examples 4800,1600,3200,960]

1. build the offline benchmark from Debian packages (cached) and its instruction data;
2. pretrain the tiny AudioMosaic encoder (contrastive) and, same data/steps/batch, the MAE baseline;
3. probe both, a random encoder and MFCC on the three tasks (results JSON + Markdown/HTML report);
4. train the audio-language model's stages with (a) the pretrained encoder, (b) a random encoder, (c) no audio,
   report closed-ended QA accuracy per question type, then evaluate (a)'s artifact (QA, captions, classify by
   generation);
5. write ``report.html``, one self-contained page of all of it with a gallery of test clips (:mod:`eval.run_report`).

The settings are one YAML file, ``configs/pipeline/<preset>.yaml`` (``default``: under 30 minutes on 2 CPU cores;
``long``: a few hours), read once into the checked :class:`PipelineConfig`; a command-line option overrides its
value there, and the checked config is saved in ``{out}/pipeline.json``. The run folder's layout is
:mod:`mosaic_core.run_layout`'s. The jobs are run by command name (``recipes.cli.run_job``: ``pretrain``,
``eval-encoder``; ``alm-experiment`` in its own processes), never by importing another recipe.

The work shares the cores (``jobs``): the MAE baseline pretrains beside the contrastive run; the ALM variants
that need no pretrained encoder (no audio, random) start as soon as a core is free, the pretrained one as soon as
its encoder is trained, each beside the encoder evaluation; the ALM evaluation runs as soon as the pretrained
variant is done. Every stage shows a progress bar with an ETA. Run again, the pipeline skips every stage that
finished with the same settings (data, each pretraining, the encoder evaluation, each ALM variant's stages and
evaluation, the ALM evaluation) and resumes the one that was interrupted. ``{out}/pipeline.json`` is rewritten
after every stage: each stage's wall time and whether it ran or was skipped, plus totals, so a killed run still
shows what finished.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from mosaic_core.config import (
    ConfigError,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    parse_config,
    read_yaml,
    to_plain,
)
from mosaic_core.io import atomic_write_json
from mosaic_core.run_layout import RunLayout, final_artifact

REPO = Path(__file__).resolve().parents[1]
PRESET_DIR = REPO / "configs" / "pipeline"
VARIANTS = ("pretrained", "random", "no_audio")
PRETRAIN_RECIPE = REPO / "configs" / "pretrain" / "tiny.yaml"
EVAL_RECIPE = REPO / "configs" / "eval" / "encoder_embedded.yaml"
EVAL_TASKS = ("keywords", "instruments", "environment")


@dataclass
class AlmEvalSizes:
    closed: NonNegInt = 60  # closed-ended questions
    captions: NonNegInt = 20  # captioned clips
    classify: NonNegInt = 20  # clips per task classified by generation


@dataclass
class PipelineConfig:
    """configs/pipeline/*.yaml, checked; the command line's options override it (:func:`load_pipeline_config`)."""
    preset: str = "default"
    profile: Literal["small", "full"] = "full"
    data_root: str | None = None  # None: data/embedded-<profile>
    out: str = "runs/pipeline"
    seed: int = 0
    jobs: PositiveInt = 2
    pretrain_steps: PositiveInt = 150
    # what both pretrainings read: the unlabeled corpus (encoder/data/corpus.py; build-data makes it with the data,
    # corpus_clips of it: 0 = the clips the pretraining sees, steps x batch, one pass without repeats) or the
    # labelled tasks' train splits (the recipe before the corpus)
    pretrain_data: Literal["corpus", "labeled"] = "corpus"
    corpus_clips: NonNegInt = 0
    probes: list[Literal["linear", "weighted", "attentive"]] = field(default_factory=lambda: ["linear"])
    probe_seeds: list[int] = field(default_factory=lambda: [0])
    probe_epochs: PositiveInt = 15
    max_clips: NonNegInt = 0
    skip_alm: bool = False
    alm_variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    alm_examples: list[NonNegInt] | None = None
    alm_steps: list[NonNegInt] | None = None
    alm_test: PositiveInt = 120
    alm_eval: AlmEvalSizes = field(default_factory=AlmEvalSizes)
    alm_recipe: list[str] = field(default_factory=list)  # key=value overrides of every ALM stage
    alm_overrides: list[str] = field(default_factory=list)  # the command line's, after alm_recipe
    budget: Literal["auto", "full"] = "full"  # auto: the ALM budget sized to this machine (mosaic_core.budget)
    target_minutes: PositiveFloat = 28.0  # budget auto: the predicted wall time to fit
    budget_floor: Probability = 0.6  # budget auto: the smallest scale of the ALM budget
    budget_scale: Probability | None = None  # a scale of the ALM budget chosen by hand (instead of auto / full)

    def __post_init__(self):
        if unknown := sorted(set(self.alm_variants) - set(VARIANTS)):
            raise ValueError(f"alm_variants: unknown {unknown}; choose from {','.join(VARIANTS)}")
        for key in ("alm_examples", "alm_steps"):
            if getattr(self, key) is not None and len(getattr(self, key)) != 4:
                raise ValueError(f"{key} needs four numbers (stages 1-4), got {getattr(self, key)}")
        if self.budget_scale is not None and self.budget_scale <= 0:
            raise ValueError(f"budget_scale must be in (0, 1], got {self.budget_scale}")
        if not self.skip_alm and self.alm_examples is None and self.alm_steps is None:
            raise ValueError("alm_examples or alm_steps must give the ALM stages' budget")

    @property
    def alm_stage_overrides(self) -> list[str]:
        return [*self.alm_recipe, *self.alm_overrides]  # the user's overrides come last and win

    def alm_budget(self) -> tuple[str, list[int]]:
        """(the stage config key, the four stages' values): examples where given, else steps."""
        return ("train.examples", self.alm_examples) if self.alm_examples else ("train.max_steps", self.alm_steps)

    def scaled(self, scale: float) -> PipelineConfig:
        """This config with the ALM's training budget times ``scale``: every stage's examples (a multiple of the
        batch of 8) or steps. The projector alignment keeps its steps: it carries the audio advantage (scaled with
        the rest to 0.38 it stopped at 0.785 option accuracy and the ALM tied its no-audio baseline; at 0.6 of the
        examples with the whole alignment closed QA held 0.525 against 0.24-0.30 without audio:
        results/pipeline_budget/fp32_auto, examples_only)."""
        from mosaic_core.budget import scaled_count

        if scale >= 1:
            return self
        key, values = self.alm_budget()
        values = [scaled_count(v, scale, 8 if key == "train.examples" else 1) for v in values]
        budget = {"alm_examples": values} if key == "train.examples" else {"alm_steps": values}
        return replace(self, **budget)


# ------------------------------------------------------------------------------------------------------ config
def _parse_args(argv) -> argparse.Namespace:
    presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    p = argparse.ArgumentParser(prog="mosaic-alm pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=presets, default="default",
                   help="configs/pipeline/<preset>.yaml: default: under 30 minutes on 2 CPU cores; long: more probe "
                        "seeds and epochs, a bigger ALM budget and test set (a few hours); any option below "
                        "overrides the preset")
    p.add_argument("--profile", choices=["small", "full"], default=None, help="embedded data profile")
    p.add_argument("--data-root", default=None, help="default data/embedded-<profile>")
    p.add_argument("--out", default=None, help="run folder (default runs/pipeline)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="steps of each pretraining (contrastive, MAE)")
    p.add_argument("--pretrain-data", choices=["corpus", "labeled"], default=None,
                   help="what both pretrainings read: corpus (the default: the unlabeled corpus build-data makes, "
                        "steps x batch clips) or labeled (the tasks' train splits)")
    p.add_argument("--corpus-clips", type=int, default=None,
                   help="unlabeled clips to build (default 0: the pretraining's steps x batch, one pass)")
    p.add_argument("--probe-seeds", default=None, help="probe seeds of the attentive/weighted probes, e.g. 0,1,2")
    p.add_argument("--probes", default=None, help="probes besides the fair linear read-out, e.g. linear,attentive")
    p.add_argument("--probe-epochs", type=int, default=None, help="epochs of the trained probes")
    p.add_argument("--max-clips", type=int, default=None, help="> 0: at most this many clips per split in the "
                                                                "encoder evaluation (a quick look)")
    p.add_argument("--alm-steps", default=None, help="optimizer steps of ALM stages 1-4 (instead of --alm-examples)")
    p.add_argument("--alm-examples", default=None, help="training examples of ALM stages 1-4, e.g. 4800,1600,3200,960")
    p.add_argument("--alm-test", type=int, default=None, help="closed-ended test questions per variant")
    p.add_argument("--alm-eval", default=None, help="ALM evaluation sizes: closed-QA questions, captioned "
                                                     "clips, clips per task classified by generation")
    p.add_argument("--alm-variants", default=None, help="ALM ablation variants to run (default: all three)")
    p.add_argument("--skip-alm", action="store_true", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--jobs", type=int, default=None, help="processes at a time for the MAE baseline and the ALM "
                                                          "variants (one torch thread each)")
    p.add_argument("--budget", choices=["auto", "full"], default=None,
                   help="full (the default preset): the ALM's budget as configured; auto: its training budget "
                        "scaled to fit target_minutes where the run is predicted to take longer (measured to cost "
                        "the ALM its audio advantage at 0.38: results/pipeline_budget)")
    p.add_argument("--budget-scale", type=float, default=None,
                   help="scale the ALM's training budget (examples, alignment steps) by this factor in (0, 1]")
    p.add_argument("alm_overrides", nargs="*",
                   help="key=value overrides for every ALM stage (e.g. train.precision=fp32)")
    return p.parse_args(sys.argv[1:] if argv is None else argv)


def _comma_list(text: str, flag: str, cast=str) -> list:
    try:
        return [cast(x) for x in text.split(",") if x]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def _cli_values(args: argparse.Namespace) -> dict:
    """The command line's options as config values (only those given)."""
    from eval.alm_variants import stage_budget

    out = {k: getattr(args, k) for k in ("profile", "data_root", "out", "pretrain_steps", "pretrain_data",
                                         "corpus_clips", "probe_epochs",
                                         "max_clips", "alm_test", "skip_alm", "seed", "jobs", "budget",
                                         "budget_scale")
           if getattr(args, k) is not None}
    if args.probe_seeds is not None:
        out["probe_seeds"] = _comma_list(args.probe_seeds, "--probe-seeds", int)
    if args.probes is not None:
        out["probes"] = _comma_list(args.probes, "--probes")
    if args.alm_variants is not None:
        out["alm_variants"] = _comma_list(args.alm_variants, "--alm-variants")
        if unknown := sorted(set(out["alm_variants"]) - set(VARIANTS)):
            raise ConfigError(f"--alm-variants: unknown {unknown}; choose from {','.join(VARIANTS)}")
    if args.alm_eval is not None:
        try:
            sizes = [int(x) for x in args.alm_eval.split(",")]
        except ValueError:
            sizes = []
        if len(sizes) != 3:
            raise ConfigError(f"--alm-eval needs three comma-separated numbers, got {args.alm_eval!r}")
        out["alm_eval"] = dict(zip(("closed", "captions", "classify"), sizes))
    if args.alm_examples is not None:
        out["alm_examples"] = stage_budget(args.alm_examples, "--alm-examples")
    if args.alm_steps is not None:
        out["alm_steps"] = stage_budget(args.alm_steps, "--alm-steps")
        out.setdefault("alm_examples", None)  # steps given: the preset's example budget does not apply
    out["alm_overrides"] = list(args.alm_overrides)
    return out


def load_pipeline_config(argv=None) -> PipelineConfig:
    """configs/pipeline/<--preset>.yaml with the command line's options over it, checked."""
    args = _parse_args(argv)
    path = PRESET_DIR / f"{args.preset}.yaml"
    return parse_config(PipelineConfig, {**read_yaml(path), **_cli_values(args)}, f"pipeline config {path}")


def check_alm_settings(cfg: PipelineConfig) -> None:
    """Every ALM stage's config with the pipeline's overrides and budget, checked now, not after the hour before
    stage 4."""
    from mosaic_alm.stage_config import STAGES, check_stage_config
    from mosaic_core.config import load_config

    key, budget = cfg.alm_budget()
    for path, n in zip(STAGES, budget):
        check_stage_config(load_config(path, [*cfg.alm_stage_overrides, f"{key}={n}"]))


class StageLog:
    """Each stage's wall time and status (ran / skipped) in ``pipeline.json``, written after every stage. A skipped
    stage keeps the wall time of the run that made it (``seconds_when_ran``, from the previous pipeline.json), so
    ``total_seconds_when_ran`` is the whole pipeline's time even when it finished over several runs."""

    def __init__(self, path: Path, config: dict):
        self.path, self.t0 = path, time.time()
        try:
            self.before = json.loads(path.read_text()).get("stages", {})
        except (OSError, ValueError, AttributeError):
            self.before = {}
        self.doc = {"config": config, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "finished": False, "stages": {},
                    "timings": {}}

    def run(self, name: str, title: str, done, work, within: str | None = None) -> None:
        """``done()`` -> a reason to skip (str) or None; otherwise ``work()`` runs (it may return a status str).
        ``within``: the stage this one runs inside of (its time is part of that stage's, not added again)."""
        t = time.time()
        why = done()
        if why:
            print(f"== {title}: skip ({why})", flush=True)
            status = "skipped"
        else:
            print(f"== {title}", flush=True)
            status = work()
            status = status if isinstance(status, str) else "ran"
        self.add(name, time.time() - t, status, within)

    def add(self, name: str, seconds: float, status: str, within: str | None = None) -> None:
        entry = {"seconds": round(seconds, 1), "status": status, **({"within": within} if within else {})}
        old = self.before.get(name, {})
        if status == "skipped" and (old.get("seconds_when_ran") or old.get("status") == "ran"):
            entry["seconds_when_ran"] = old.get("seconds_when_ran", old.get("seconds"))
        self.doc["stages"][name] = entry
        self.doc["timings"][f"{name}_s"] = round(seconds, 1)
        st = [s for s in self.doc["stages"].values() if "within" not in s]
        self.doc["total_seconds"] = round(time.time() - self.t0, 1)
        self.doc["ran_seconds"] = round(sum(s["seconds"] for s in st if s["status"] != "skipped"), 1)
        self.doc["total_seconds_when_ran"] = round(sum(s.get("seconds_when_ran", s["seconds"]) for s in st), 1)
        self.doc["skipped"] = [n for n, s in self.doc["stages"].items() if s["status"] == "skipped"]
        self.save()

    def save(self, finished: bool = False) -> None:
        self.doc["finished"] = finished
        self.doc["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_json(self.path, self.doc, indent=1)


# ------------------------------------------------------------------------------------------------------- setup
class PipelineRun:
    """One pipeline run: its checked config, run folder, data root, stage log, and who holds the cores (the main
    process: pretraining, then the encoder evaluation; the MAE process while it trains; the ALM variants take what
    is left as soon as they can start)."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg, self.out = cfg, RunLayout(cfg.out)
        self.root = Path(cfg.data_root or REPO / "data" / f"embedded-{cfg.profile}")
        self.n_steps = 3 if cfg.skip_alm else 4
        self.encoders = {name: str(self.out.encoder(name)) for name in ("audiomosaic", "mae")}
        self.state = {"main_busy": True, "encoder_ready": False}
        self.side = None  # the MAE baseline's process, when it trains beside the contrastive run
        self.alm: VariantRunner | None = None
        self.log = StageLog(self.out.pipeline_json, to_plain(cfg))

    def pretrain_overrides(self, name: str, objective: str) -> list[str]:
        from encoder.data.corpus import corpus_dir

        shards = corpus_dir(self.root) if self.cfg.pretrain_data == "corpus" else "null"
        return [f"data.root={self.root}", f"data.shards={shards}", f"run_dir={self.out.pretrain(name)}",
                f"train.max_steps={self.cfg.pretrain_steps}", f"seed={self.cfg.seed}", f"objective={objective}"]

    @functools.cached_property
    def corpus_clips(self) -> int:
        """The unlabeled clips the data stage builds (the pretraining recipe is read once, not at every use)."""
        return corpus_clips(self.cfg)[0]

    def free_cores(self) -> int:
        return self.cfg.jobs - self.state["main_busy"] - (self.side is not None and self.side.poll() is None)


def corpus_clips(cfg: PipelineConfig) -> tuple[int, int]:
    """(the unlabeled clips to build: ``corpus_clips`` or steps x batch, the clips each pretraining reads); (0, 0)
    when the pretrainings read the labelled splits."""
    if cfg.pretrain_data != "corpus":
        return 0, 0
    from encoder.pretraining import PretrainConfig
    from mosaic_core.config import load_config

    batch = parse_config(PretrainConfig, load_config(PRETRAIN_RECIPE), "pretraining config").train.batch_size
    return cfg.corpus_clips or cfg.pretrain_steps * batch, cfg.pretrain_steps * batch


def setup(cfg: PipelineConfig) -> PipelineRun:
    """Threads, logging, the ALM budget for this machine, the run folder and pipeline.json's header (precision,
    commit, machine, expected time, budget)."""
    from transformers.utils import logging as hf_logging

    from mosaic_core.provenance import git_commit, machine_info

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    hf_logging.disable_progress_bar()  # weight loading / shard writing bars: the stages' own bars are enough
    if cfg.jobs > 1:  # one compute thread per job, this process's BLAS pools included (they spin beside the others)
        from mosaic_core.runtime import set_threads

        set_threads(1)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    precision = _precision()
    print(f"== precision: {precision}", flush=True)
    expected = budget = None
    if cfg.preset == "default" and not cfg.skip_alm:
        expected, budget = _expected_duration(cfg, corpus_clips(cfg))
        cfg = cfg.scaled(budget["scale"])
        print(f"== expected duration on this machine: {expected['note']}", flush=True)
        print(f"== budget: {budget['note']}", flush=True)
    run = PipelineRun(cfg)
    doc = run.log.doc
    doc["data_root"], doc["precision"] = str(run.root), precision
    doc["git"], doc["machine"] = git_commit(), machine_info()  # the report's header reads them here
    if expected is not None:
        doc["expected"], doc["budget"] = expected, budget
    return run


def start_side_jobs(run: PipelineRun) -> None:
    """The MAE baseline in a second process (when a second core is there), and the ALM variants' runner, which
    starts each variant as soon as it is ready and a core is free (the random and no-audio variants need no
    pretrained encoder)."""
    from encoder.pretraining import PretrainConfig
    from mosaic_core.config import load_config

    cfg, out = run.cfg, run.out
    if not _pretrained(out.pretrain("mae"), cfg.pretrain_steps) and cfg.jobs > 1:
        run.side = _spawn(["-m", "recipes.pretrain", "--config", str(PRETRAIN_RECIPE),
                           *run.pretrain_overrides("mae", "mae"), "train.progress=false"],
                          out.pretrain("mae") / "pretrain.log")
    if cfg.skip_alm:
        return
    pre = parse_config(PretrainConfig, load_config(PRETRAIN_RECIPE, run.pretrain_overrides("audiomosaic",
                                                                                            "contrastive")),
                       "pretraining config")
    key, values = cfg.alm_budget()
    budget = ["--examples" if key == "train.examples" else "--steps", ",".join(map(str, values))]
    run.alm = VariantRunner(cfg.alm_variants, lambda v, res: _spawn(
        ["-m", "recipes.cli", "alm-experiment", "--data", str(run.root), "--encoder", run.encoders["audiomosaic"],
         *budget, "--random-size", str(pre.model.size), "--max-test", str(cfg.alm_test), "--seed", str(cfg.seed),
         "--variants", v, "--output-dir", str(out.alm), "--out", str(res), "--reuse", *cfg.alm_stage_overrides],
        out.alm_log(v)), out.root, free=run.free_cores, ready=lambda v: v != "pretrained" or run.state["encoder_ready"])


# -------------------------------------------------------------------------------------------------------- jobs
def build_data_stage(run: PipelineRun) -> None:
    def build_data():
        from encoder.data.corpus import build_corpus, corpus_dir
        from encoder.data.embedded import TASKS, build
        from mosaic_alm.instructions import generate
        from mosaic_core.progress import progress_bar

        for task in progress_bar(TASKS, desc="data: tasks", unit="task", mininterval=0):
            build(run.root, profile=run.cfg.profile, seed=run.cfg.seed, tasks=[task])
        generate(run.root, seed=run.cfg.seed)
        if run.corpus_clips:
            info = build_corpus(run.root, run.corpus_clips, seed=run.cfg.seed, jobs=run.cfg.jobs)
            print(f"[pipeline] unlabeled corpus: {info['clips']} clips, {info['hours']} h "
                  f"({info['seconds']['total']:.0f} s to build) -> {corpus_dir(run.root)}", flush=True)

    corpus = f" + {run.corpus_clips} unlabeled clips" if run.corpus_clips else ""
    run.log.run("data", f"1/{run.n_steps} data: {run.root} ({run.cfg.profile}{corpus})",
                lambda: _data_ready(run.root, run.cfg.profile, run.cfg.seed, run.corpus_clips), build_data)


def _run_pretraining(run: PipelineRun, name: str, objective: str) -> None:
    from recipes.cli import run_job

    code = run_job("pretrain", ["--config", str(PRETRAIN_RECIPE), *run.pretrain_overrides(name, objective)])
    if code:
        from encoder.pretraining import TrainingError

        raise TrainingError(f"the {name} pretraining failed (exit {code}; its error is above)")


def pretrain_stages(run: PipelineRun) -> None:
    """The contrastive pretraining here, then the MAE baseline: waited for when it trains alongside, else here."""
    cfg, out, side = run.cfg, run.out, run.side
    run.log.run("pretrain_audiomosaic", f"2/{run.n_steps} pretrain audiomosaic (contrastive) -> "
                f"{out.pretrain('audiomosaic')}" + (" (the MAE baseline trains alongside)" if side else ""),
                lambda: _pretrained(out.pretrain("audiomosaic"), cfg.pretrain_steps),
                lambda: _run_pretraining(run, "audiomosaic", "contrastive"))
    run.state["encoder_ready"] = True
    if run.alm is not None:  # the main process now only waits: its core goes to the pretrained ALM variant
        run.state["main_busy"] = False
    mae_run = out.pretrain("mae")
    run.log.run("pretrain_mae", f"2/{run.n_steps} pretrain mae (same data, steps and batch) -> {mae_run}",
                lambda: None if side else _pretrained(mae_run, cfg.pretrain_steps),
                lambda: _wait(side, "the MAE pretraining") if side else _run_pretraining(run, "mae", "mae"))
    if side:  # its stage time above is only the wait after the contrastive run; this is its own training loop's
        hist = json.loads((mae_run / "history.json").read_text())
        run.log.doc["stages"]["pretrain_mae"]["seconds_alongside"] = hist[-1].get("elapsed_s") if hist else None
        run.log.save()


def encoder_eval_overrides(run: PipelineRun) -> list[str]:
    cfg, enc = run.cfg, run.encoders
    return [f"data_root={run.root}", f"run_dir={run.out.eval_encoder}", f"seed={cfg.seed}",
            f"probe_seeds=[{','.join(map(str, cfg.probe_seeds))}]", f"max_clips_per_split={cfg.max_clips}",
            f"probe.epochs={cfg.probe_epochs}", f"probes=[{','.join(cfg.probes)}]",
            f"encoders={{audiomosaic: {enc['audiomosaic']}, mae: {enc['mae']}, random: random}}",
            "tasks=[" + ", ".join(str(REPO / f"configs/data/embedded_{t}.yaml") for t in EVAL_TASKS) + "]"]


def encoder_eval_stage(run: PipelineRun) -> None:
    """The encoder evaluation (``eval-encoder``), its probe accuracies then put into the encoders' model cards. With
    the ALM on it is handed to the runner as its last job (its own process, once a core is free and no ALM variant
    waits: the pretrained variant starts as soon as its encoder is trained, so the evaluation, which nothing else
    waits for, no longer holds up the longest chain); without the ALM it runs here."""
    from eval.encoder_eval_config import EncoderEvalConfig
    from mosaic_core.config import load_recipe
    from recipes.cli import run_job

    over = encoder_eval_overrides(run)
    ecfg, _ = load_recipe(EncoderEvalConfig, EVAL_RECIPE, over)
    title = f"3/{run.n_steps} encoder evaluation"
    why = _encoder_eval_done(ecfg, run.encoders)
    if why is None and run.alm is not None:
        print(f"== {title}: in its own process beside the ALM variants, once a core is free "
              f"(log: {run.out.eval_encoder / 'eval_encoder.log'})", flush=True)
        run.alm.add_job("eval_encoder", lambda: _spawn(["-m", "recipes.cli", "eval-encoder", "--config",
                                                        str(EVAL_RECIPE), *over],
                                                       run.out.eval_encoder / "eval_encoder.log"))
        return

    def evaluate() -> None:
        run_job("eval-encoder", ["--config", str(EVAL_RECIPE), *over])
        record_probes(run)

    run.log.run("eval_encoder", title, lambda: why, evaluate)


def record_probes(run: PipelineRun) -> None:
    results = json.loads(run.out.encoder_eval_json.read_text())["numbers"]
    record_probe_results(results, run.encoders, f"mosaic-alm pipeline {run.out.root}, seeds "
                                                f"{','.join(map(str, run.cfg.probe_seeds))}")


def evaluate_pretrained(run: PipelineRun) -> None:
    """The pretrained variant's artifact (QA, captions with their baselines, classify by generation), while the
    other variants finish."""
    art = final_artifact(run.alm.files["pretrained"])
    if art is None:
        return
    from eval.alm_benchmark import evaluate_alm

    cfg, sizes = run.cfg, run.cfg.alm_eval
    run.state["main_busy"] = True
    # the caption baselines, scored by the same harness: the no-audio variant (waited for: it starts second and is
    # shorter, but a busy machine can finish it after the pretrained one) and retrieval by the pretrained encoder
    silent = final_artifact(run.alm.files["no_audio"]) if run.alm.wait_for("no_audio") else None
    base = {"no_audio_artifact": str(silent) if silent else None, "retrieval_encoder": run.encoders["audiomosaic"]}
    ev = run.out.eval_alm
    run.log.run("eval_alm", f"ALM evaluation of {art} (QA, captions with their baselines, classify-by-generation)",
                lambda: _alm_eval_done(run.out.alm_eval_json, art, run.root, cfg.seed,
                                       [sizes.closed, sizes.captions, sizes.classify], base),
                lambda: evaluate_alm(str(art), str(run.root), str(ev), max_closed=sizes.closed,
                                     max_captions=sizes.captions, max_classify=sizes.classify, seed=cfg.seed,
                                     **base), within="alm")
    run.state["main_busy"] = False


def alm_stage(run: PipelineRun) -> None:
    """The ALM variants (their processes started as soon as they could), the ALM evaluation inside, then the
    variants' results combined in alm_qa.json and the pretrained one's accuracy put into its card."""
    from eval.alm_variants import combine_results

    alm, out = run.alm, run.out
    run.state["main_busy"] = False  # the ALM variants may now use every core
    run.log.run("alm", f"4/4 audio-language model: variants {', '.join(run.cfg.alm_variants)} (stages 1-4, "
                       f"closed-QA evaluation; logs in {out.alm})", lambda: None,
                lambda: alm.wait(run.log, after="pretrained", then=lambda: evaluate_pretrained(run)))
    if "eval_encoder" in alm.seconds:  # the encoder evaluation ran beside the variants: its own time, within alm
        run.log.add("eval_encoder", alm.seconds["eval_encoder"], "ran", within="alm")
        record_probes(run)
    combine_results([alm.files[v] for v in run.cfg.alm_variants], out.alm_qa)
    art = final_artifact(alm.files["pretrained"]) if "pretrained" in alm.files else None
    if art is not None and out.alm_qa.is_file():
        record_qa_results(out.alm_qa, art, f"mosaic-alm pipeline {out.root}")


# -------------------------------------------------------------------------------------------------------- save
def finish(run: PipelineRun) -> None:
    """pipeline.json marked finished, then the report."""
    from eval.run_report import build_report

    log = run.log
    log.save(finished=True)
    print(f"== report: {build_report(run.out.root, run.root, seed=run.cfg.seed)}", flush=True)
    print(f"== done: {run.out.root} ({log.doc['total_seconds']:.0f} s; ran {log.doc['ran_seconds']:.0f} s, skipped "
          f"{log.doc['skipped'] or 'nothing'}); stage times in {run.out.pipeline_json}", flush=True)


def main(argv=None) -> int:
    cfg = load_pipeline_config(argv)
    if not cfg.skip_alm:  # the ALM settings are checked now, not after the hour before stage 4
        check_alm_settings(cfg)
    run = setup(cfg)
    build_data_stage(run)
    start_side_jobs(run)
    try:  # pretraining (the MAE baseline alongside), then the encoder evaluation
        pretrain_stages(run)
        encoder_eval_stage(run)
    except BaseException:  # nothing is left running
        if run.alm is not None:
            run.alm.stop()
        raise
    if not cfg.skip_alm:
        alm_stage(run)
    finish(run)
    return 0


def record_probe_results(results: dict, encoders: dict, source: str) -> None:
    """Put the probes' test accuracies into the model cards of the evaluated encoder folders."""
    from mosaic_core.cards import add_card_results

    for name, folder in encoders.items():
        rows = [{"task": "audio-classification", "task_name": f"{probe} probe (frozen encoder)", "dataset": task,
                 "split": role, "metric": "accuracy", "value": r["accuracy"]["mean"], "source": source}
                for task, by_enc in results["tasks"].items() for probe, by_role in by_enc.get(name, {}).items()
                if isinstance(by_role, dict) for role, r in by_role.items() if role.startswith("test")]
        if rows and (Path(folder) / "README.md").is_file():
            add_card_results(folder, rows)


def record_qa_results(qa_json: Path, artifact: Path, source: str) -> None:
    """Put the pretrained variant's closed-ended QA accuracy (overall and per question type) into its card."""
    from mosaic_core.cards import add_card_results

    acc = json.loads(qa_json.read_text())["variants"].get("pretrained", {}).get("accuracy")
    if not acc or not (artifact / "README.md").is_file():
        return
    rows = [{"task": "audio-text-to-text", "task_name": "closed-ended QA, exact match", "dataset": f"embedded/{q}",
             "split": "test", "metric": "accuracy", "value": a["exact_match"], "source": source}
            for q, a in {"all": acc["overall"], **acc["per_qtype"]}.items()]
    add_card_results(artifact, rows)


class VariantRunner:
    """The ALM variants as ``alm-experiment --reuse`` processes (one thread each), started by a background thread
    as soon as one is ``ready`` and a core is free (``free()``: the cores the pipeline's other work leaves), the
    pretrained variant first, then the shorter ones (no audio, then random), then jobs handed over later
    (:meth:`add_job`: the encoder evaluation). Finished stages and evaluations are reused, so a re-run only does
    what is missing."""

    PRIORITY = ("pretrained", "no_audio", "random")

    def __init__(self, variants, start, out: Path, free, ready):
        import threading

        self.variants, self.start_fn, self.free, self.ready = list(variants), start, free, ready
        self.files = {v: out / f"alm_qa_{v}.json" for v in self.variants}
        self.seconds, self.error, self.done = {}, None, threading.Event()
        self.finished = {v: threading.Event() for v in self.variants}
        self.bar, self.stopped = None, False
        self.waiting = sorted(self.variants, key=lambda v: self.PRIORITY.index(v) if v in self.PRIORITY else 99)
        self.extra, self.lock, self.done_adding = {}, threading.Lock(), False  # wait() closes the list
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def add_job(self, name: str, start) -> None:
        """Run ``start()`` (a process) after every variant that is waiting, once a core is free."""
        import threading

        with self.lock:
            self.extra[name] = start
            self.finished[name] = threading.Event()
            self.waiting.append(name)

    def _next(self):
        with self.lock:
            v = next((w for w in self.waiting if w in self.extra or self.ready(w)), None)
            if v is not None:
                self.waiting.remove(v)
            return v

    def _start(self, v):
        return self.extra[v]() if v in self.extra else self.start_fn(v, self.files[v])

    def _loop(self) -> None:
        running = {}
        try:
            while (self.waiting or running or not self.done_adding) and not self.stopped:
                while len(running) < self.free() and (v := self._next()):
                    running[v] = (time.time(), self._start(v))
                for v, (t0, proc) in list(running.items()):
                    if proc.poll() is not None:
                        _wait(proc, f"ALM variant {v}" if v in self.files else v.replace("_", " "))
                        self.seconds[v] = round(time.time() - t0, 1)
                        del running[v]
                        self.finished[v].set()
                        if self.bar is not None and v in self.files:
                            self.bar.update(1)
                time.sleep(1.0)
        except Exception as exc:  # noqa: BLE001 -- handed to the main thread by wait()
            self.error = exc
        for _, proc in running.values():  # after an error or stop(): nothing is left running
            proc.terminate()
        self.done.set()

    def stop(self) -> None:
        self.stopped = True
        self.done.wait()

    def wait_for(self, variant: str) -> bool:
        """Block until ``variant`` has finished (True) or the runner stopped without it (False; also when the run
        has no such variant)."""
        if variant not in self.finished:
            return False
        while not (self.finished[variant].is_set() or self.done.is_set()):
            self.done.wait(1.0)
        return self.finished[variant].is_set()

    def wait(self, log: StageLog, after: str | None = None, then=None) -> str:
        """Wait for every variant and job (no job is added after this); when variant ``after`` is done (and the
        others still run), call ``then()``."""
        from mosaic_core.progress import progress_bar

        self.done_adding = True
        self.bar = progress_bar(total=len(self.variants), initial=len(set(self.seconds) & set(self.variants)),
                                mininterval=0,
                                desc="ALM variants", unit="variant")
        if then is not None and self.wait_for(after):
            if self.error is None:
                try:
                    then()
                except BaseException:
                    self.stop()
                    raise
        self.done.wait()
        self.bar.close()
        if self.error is not None:
            raise self.error
        log.doc["alm_variant_seconds"] = {v: t for v, t in self.seconds.items() if v in self.files}
        kept = [json.loads(self.files[v].read_text())["variants"][v] for v in self.variants]
        if not self.extra and all(r.get("evaluation_reused") and all(st.get("reused") for st in r["stages"])
                                  for r in kept):
            return "skipped"  # every stage and evaluation was found done
        return "ran"


def _spawn(cmd: list[str], log_path: Path):
    """``python cmd...`` in the background (one torch thread), its output to ``log_path``."""
    import os
    import subprocess

    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(log_path, "ab") as fh:
        proc = subprocess.Popen([sys.executable, *cmd], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    return proc


def _wait(proc, what: str) -> str:
    """Wait for a background job; a failure is one line naming it, its last log line and the log."""
    if proc.wait() != 0:
        lines = [x for x in proc.log_path.read_text(errors="replace").splitlines() if x.strip()]
        from encoder.pretraining import TrainingError

        raise TrainingError(f"{what} failed (exit {proc.returncode}): {lines[-1] if lines else ''} "
                          f"(log: {proc.log_path})")
    return "ran"


def _precision() -> str:
    """The run log's precision line (:func:`mosaic_core.runtime.precision_note`) for the stages' ``precision: auto``,
    with what it means for the wall time where the CPU has no native bf16 (the default took 15.7 minutes with
    AVX512-BF16, about 3x that without: results/README.md)."""
    import torch

    from mosaic_core.runtime import cpu_bf16_isa, precision_note, use_bf16

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    note = precision_note(use_bf16("auto", device), device)
    if device.type == "cpu" and cpu_bf16_isa() is None:
        note += "; pretraining and ALM steps take about 3x as long as with it (README: measured times)"
    return note


def _expected_duration(cfg: PipelineConfig, corpus: tuple[int, int] = (0, 0)) -> tuple[dict, dict]:
    """The default's expected wall time on this machine and the ALM budget it runs with (:mod:`mosaic_core.budget`),
    from a 2-second matmul benchmark (setup excluded, the 0ad download and the LLM conversion cached). With
    ``budget: auto`` a run folder that already recorded a budget for the same settings keeps it (a re-run then
    skips the stages that finished instead of re-running them at a slightly different scale). ``corpus``: the
    unlabeled clips the run builds and each pretraining reads (:func:`mosaic_core.budget.with_corpus`)."""
    import torch

    from mosaic_core.budget import DEFAULT_COSTS, predict_seconds, size_budget, with_corpus
    from mosaic_core.runtime import matmul_gflops, use_bf16

    bf16 = use_bf16("auto", torch.device("cpu")) and not torch.cuda.is_available()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # the best of four short measurements: other work on the cores only ever lowers one (a single 1.5 s one
        # read 134 and 175 GFLOP/s on the same idle machine an hour apart)
        g = max(matmul_gflops(bf16, seconds=0.4, size=2048) for _ in range(4))
    finally:
        torch.set_num_threads(threads)
    costs = with_corpus(DEFAULT_COSTS, *corpus)
    plan = size_budget(g, cfg.target_minutes, cfg.budget_floor, costs)
    if cfg.budget_scale is not None or cfg.budget == "full":
        scale = 1.0 if cfg.budget_scale is None else cfg.budget_scale
        plan.update(scale=scale, predicted_minutes=round(predict_seconds(costs, g, scale) / 60, 1),
                    why=f"the ALM budget scaled to {scale:.2f} by hand (budget_scale)" if cfg.budget_scale is not None
                    else "the full ALM budget (budget: full)")
    settings = to_plain(cfg)
    before = _previous_budget(Path(cfg.out) / "pipeline.json", settings)
    if before is not None and before["scale"] != plan["scale"]:
        minutes = round(predict_seconds(costs, g, before["scale"]) / 60, 1)
        plan.update(scale=before["scale"], predicted_minutes=minutes,
                    why=f"the budget this run folder started with (scale {before['scale']:.2f}: {before['why']})")
    scaled = cfg.scaled(plan["scale"])
    plan.update(budget=cfg.budget, settings=settings, alm_examples=scaled.alm_examples, alm_steps=scaled.alm_steps,
                align_steps=_align_steps(scaled.alm_stage_overrides))
    what = (f"ALM examples {','.join(map(str, scaled.alm_examples))}" if scaled.alm_examples else
            f"ALM steps {','.join(map(str, scaled.alm_steps))}") + f", alignment steps {plan['align_steps']}"
    plan["note"] = f"{plan['why']}: {what}"
    minutes = plan["predicted_minutes"]
    note = (f"about {minutes:.0f} minutes (matmul {g:.0f} GFLOP/s in {'bf16' if bf16 else 'fp32'} on 2 threads; "
            f"model and measured runs: {costs['source']}; other work on the cores slows it further)")
    return {"minutes": minutes, "matmul_gflops": round(g, 1), "bf16": bf16, "note": note}, plan


def _previous_budget(path: Path, settings: dict) -> dict | None:
    """The budget a run folder's pipeline.json recorded for these very settings, else None."""
    try:
        budget = json.loads(path.read_text()).get("budget")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(budget, dict) and budget.get("settings") == settings and isinstance(budget.get("scale"), float):
        return budget
    return None


def _align_steps(overrides: list[str]) -> int:
    """The projector-alignment steps the ALM stages run with (the last override wins; 0: none)."""
    steps = [o.split("=", 1)[1] for o in overrides if o.startswith("train.align_steps=")]
    return int(steps[-1]) if steps else 0


def _data_ready(root: Path, profile: str, seed: int, corpus_clips: int = 0) -> str | None:
    """Why the data stage can be skipped (every task built with these settings, instructions written after, and
    an unlabeled corpus of at least ``corpus_clips`` built with this seed)."""
    from encoder.data.embedded import TASKS, VERSION

    info_path = root / "build_info.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return None
    key = {"profile": profile, "seed": seed, "version": VERSION, "limit": None}
    if any(info.get(k) != v for k, v in key.items()):
        return None
    if not all(t in info.get("tasks", {}) and (root / t / "manifest.jsonl").is_file() for t in TASKS):
        return None
    ins = [root / "instructions" / f"{s}.json" for s in ("train", "valid", "test")]
    if not all(p.is_file() and p.stat().st_mtime >= info_path.stat().st_mtime for p in ins):
        return None
    if corpus_clips:
        from encoder.data.corpus import CORPUS_VERSION, read_corpus_info

        corpus = read_corpus_info(root)
        if not corpus or corpus.get("seed") != seed or corpus.get("version") != CORPUS_VERSION \
                or corpus.get("clips", 0) < corpus_clips:
            return None
        return f"{root} is built ({', '.join(TASKS)}) with its instructions and {corpus['clips']} unlabeled clips"
    return f"{root} is built ({', '.join(TASKS)}) with its instructions"


def _pretrained(run: Path, steps: int) -> str | None:
    hist = run / "history.json"
    if (run / "encoder" / "config.json").is_file() and hist.is_file() and len(json.loads(hist.read_text())) >= steps:
        return f"{run} holds a finished run of {steps} steps"
    return None


def _encoder_eval_done(cfg, encoders: dict[str, str]) -> str | None:
    """Skip when encoder_eval.json holds this exact config and is newer than every encoder's weights."""
    from mosaic_core.config import to_plain

    path = Path(cfg.run_dir) / "encoder_eval.json"
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    weights = [Path(e) / "model.safetensors" for e in encoders.values()]
    if res.get("config") != json.loads(json.dumps(to_plain(cfg))) or \
            any(not w.is_file() or w.stat().st_mtime > path.stat().st_mtime for w in weights):
        return None
    return f"{path} holds this evaluation"


def _alm_eval_done(path: Path, artifact: Path, root: Path, seed: int, sizes: list[int],
                   baselines: dict | None = None) -> str | None:
    """Skip when ``path`` (alm_eval.json) holds this artifact's evaluation with these settings."""
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    meta = artifact / "meta.json"
    recorded = res.get("config", {})  # the settings alm_eval.json was written with
    want = {"artifact": str(artifact), "data": str(root), "max_closed": sizes[0], "max_captions": sizes[1],
            "max_classify": sizes[2], **(baselines or {})}
    if any(recorded.get(k) != v for k, v in want.items()) or res.get("seed") != seed or not meta.is_file() \
            or meta.stat().st_mtime > path.stat().st_mtime:
        return None
    return f"{path} holds the evaluation of this artifact"


if __name__ == "__main__":
    sys.exit(main())
