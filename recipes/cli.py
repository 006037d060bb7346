"""The ``mosaic-alm`` console script. Sub-commands dispatch lazily to their recipe module (``recipes/``), so importing
the CLI costs nothing. Errors a user can cause print as one line."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    # name: (recipe module, function, help)
    "build-data": ("recipes.build_data", "main", "build the embedded offline benchmark from Debian packages"),
    "make-instructions": ("recipes.make_instructions", "main", "generate ALM instruction data from the manifests"),
    "pretrain": ("recipes.pretrain", "main", "contrastive AudioMosaic pretraining (python or the deepspeed launcher)"),
    "pretrain-mae": ("recipes.pretrain", "main_mae", "same-budget masked-reconstruction (MAE) baseline pretraining"),
    "eval-encoder": ("recipes.eval_encoder", "main", "probe an encoder checkpoint on the embedded tasks with baselines"),
    "finetune": ("recipes.finetune", "main", "fine-tune an encoder on a task (mixup, SpecAugment, LLRD, folds)"),
    "train-alm": ("recipes.train_alm", "main", "train one stage (or all four) of the audio-language model"),
    "ask": ("recipes.infer", "main_ask", "ask a question about an audio file"),
    "caption": ("recipes.infer", "main_caption", "caption an audio file"),
    "alm-experiment": ("recipes.alm_experiment", "main", "does the encoder matter? closed QA with a pretrained vs a "
                                                          "random encoder vs no audio"),
    "eval-alm": ("recipes.eval_alm", "main", "evaluate an ALM artifact: QA accuracy, captions, classify-by-generation"),
    "pipeline": ("recipes.pipeline", "main", "the whole pipeline at tiny scale on the embedded default"),
    "report": ("recipes.report", "main", "one self-contained report.html of a pipeline run folder"),
    "demo": ("recipes.demo", "main", "a local web demo of an ALM artifact (Gradio): upload or record, ask, caption"),
}


def _usage() -> str:
    lines = ["usage: mosaic-alm <command> [options]  (mosaic-alm <command> --help)", "", "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mosaic-alm: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    fn = getattr(importlib.import_module(module), func)
    from encoder.checkpoint import CheckpointError
    from encoder.data.manifest import ManifestError
    from encoder.data.sources import BuildError
    from encoder.features import AudioError
    from encoder.pretraining import TrainingError
    from mosaic_core.config import ConfigError

    user_errors = (ConfigError, AudioError, FileNotFoundError, ManifestError, CheckpointError, TrainingError,
                   BuildError)
    try:
        return int(fn(rest) or 0)
    except user_errors as exc:
        print(f"mosaic-alm {name}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
