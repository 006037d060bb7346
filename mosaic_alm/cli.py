"""The ``mosaic-alm`` console script. Sub-commands dispatch lazily to the module that owns them, so importing
the CLI costs nothing and no package imports one that depends on it. Errors a user can cause print as one line."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    # name: (module, function, help)
    "build-data": ("encoder.data.embedded", "main", "build the embedded offline benchmark from Debian packages"),
    "make-instructions": ("mosaic_alm.instructions", "main", "generate ALM instruction data from the manifests"),
    "pretrain": ("encoder.train", "main", "contrastive AudioMosaic pretraining (python or the deepspeed launcher)"),
    "pretrain-mae": ("encoder.train", "main_mae", "same-budget masked-reconstruction (MAE) baseline pretraining"),
    "eval-encoder": ("eval.encoder_eval", "main", "probe an encoder checkpoint on the embedded tasks with baselines"),
    "finetune": ("eval.finetune", "main", "fine-tune an encoder on a task (mixup, SpecAugment, LLRD, folds)"),
    "train-alm": ("mosaic_alm.train", "main", "train one stage (or all four) of the audio-language model"),
    "ask": ("mosaic_alm.infer", "main_ask", "ask a question about an audio file"),
    "caption": ("mosaic_alm.infer", "main_caption", "caption an audio file"),
    "alm-experiment": ("mosaic_alm.experiment", "main", "does the encoder matter? closed QA with a pretrained vs a "
                                                        "random encoder vs no audio"),
    "eval-alm": ("eval.alm_eval", "main", "evaluate an ALM artifact: QA accuracy, captions, classify-by-generation"),
    "pipeline": ("mosaic_alm.pipeline", "main", "the whole pipeline at tiny scale on the embedded default"),
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
    from encoder.config import ConfigError
    from encoder.features import AudioError

    user_errors: tuple[type[BaseException], ...] = (ConfigError, AudioError, FileNotFoundError)
    from encoder.checkpoint import CheckpointError
    from encoder.data.manifest import ManifestError

    user_errors += (ManifestError, CheckpointError)
    try:
        from encoder.train import TrainingError

        user_errors += (TrainingError,)
    except ImportError:
        pass
    try:
        return int(fn(rest) or 0)
    except user_errors as exc:
        print(f"mosaic-alm {name}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
