"""The ``mosaic-alm`` console script. Sub-commands dispatch lazily to their recipe module (``recipes/``), so importing
the CLI costs nothing.

Errors a user can cause end in ONE line on stderr naming the thing and the reason, exit code 1, no traceback;
library warnings, load reports and weight-loading progress bars are silenced so nothing buries that line.
``mosaic-alm --debug <command> ...`` (the flag may stand anywhere) shows tracebacks and library output."""
from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

COMMANDS = {
    # name: (recipe module, function, help)
    "build-data": ("recipes.build_data", "main", "build the embedded offline benchmark from Debian packages"),
    "make-instructions": ("recipes.make_instructions", "main", "generate ALM instruction data from the manifests"),
    "pretrain": ("recipes.pretrain", "main", "contrastive AudioMosaic pretraining (python or the deepspeed launcher)"),
    "pretrain-mae": ("recipes.pretrain", "main_mae", "same-budget masked-reconstruction (MAE) baseline pretraining"),
    "eval-encoder": ("recipes.eval_encoder", "main",
                     "probe an encoder checkpoint on the embedded tasks with baselines"),
    "finetune": ("recipes.finetune", "main", "fine-tune an encoder on a task (mixup, SpecAugment, LLRD, folds)"),
    "train-alm": ("recipes.train_alm", "main", "train one stage (or all four) of the audio-language model"),
    "ask": ("recipes.infer", "main_ask", "ask a question about an audio file"),
    "caption": ("recipes.infer", "main_caption", "caption an audio file"),
    "alm-experiment": ("recipes.alm_experiment", "main", "does the encoder matter? closed QA with a pretrained vs a "
                                                          "random encoder vs no audio"),
    "eval-alm": ("recipes.eval_alm", "main", "evaluate an ALM artifact: QA accuracy, captions, classify-by-generation"),
    "import": ("recipes.import_release", "main", "a released AudioMosaic checkpoint (Hub id, repo folder or .pt) as "
                                                 "a kit folder"),
    "tag": ("recipes.tag", "main", "top labels of audio files from a classifier (an imported released model)"),
    "pipeline": ("recipes.pipeline", "main", "the whole pipeline at tiny scale on the embedded default"),
    "report": ("recipes.report", "main", "one self-contained report.html of a pipeline run folder"),
    "demo": ("recipes.demo", "main", "a local web demo of an ALM artifact (Gradio): upload or record, ask, caption"),
}


def run_job(name: str, argv: list[str]) -> int:
    """Run the job ``mosaic-alm NAME ARGV...`` in this process and return its exit code (errors are raised, not
    turned into one line). The one way a job that orchestrates others (the pipeline, alm-experiment) starts them:
    by command name, as a user would, so no recipe module imports another (an import-linter contract)."""
    if name not in COMMANDS:
        raise ValueError(f"unknown job {name!r}; known: {', '.join(COMMANDS)}")
    module, func, _ = COMMANDS[name]
    return int(getattr(importlib.import_module(module), func)(list(argv)) or 0)


def _usage() -> str:
    lines = ["usage: mosaic-alm [--debug] <command> [options]  (mosaic-alm <command> --help)", "",
             "  --debug            show tracebacks and library warnings/progress instead of one-line errors", "",
             "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


_LIBRARIES = ("transformers", "peft", "torch", "huggingface_hub", "accelerate", "deepspeed", "bitsandbytes",
              "sentence_transformers", "tensorboard", "webdataset")


def quiet_libraries() -> None:
    """CLI mode: libraries' warnings, load reports and weight-loading progress bars off (the kit's own progress bars
    and messages stay). Set through the environment too, so child processes (launchers, workers) inherit it."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' own bars follow this switch
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", module="(" + "|".join(_LIBRARIES) + r")(\.|$)")
    for name in _LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # already imported (e.g. main() called in-process): switch it directly
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:  # not "[Errno 2] No such file ...: 'x'"
        return f"{exc.filename}: {exc.strerror}"
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mosaic-alm: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # the kit's library modules report through logging (one line each, as the recipes' own prints read)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not debug:
        quiet_libraries()
    module, func, _ = COMMANDS[name]
    fn = getattr(importlib.import_module(module), func)
    from encoder.checkpoint import CheckpointError
    from encoder.data.manifest import ManifestError
    from encoder.data.shards import ShardError
    from encoder.data.sources import BuildError
    from encoder.features import AudioError
    from encoder.pretraining import TrainingError
    from mosaic_core.config import ConfigError

    user_errors = (ConfigError, AudioError, FileNotFoundError, ManifestError, CheckpointError, TrainingError,
                   BuildError, ShardError)
    try:
        return int(fn(rest) or 0)
    except user_errors as exc:
        if debug:
            raise
        print(f"mosaic-alm {name}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"mosaic-alm {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
