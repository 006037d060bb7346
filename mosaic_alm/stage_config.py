"""The configuration of one ALM training stage: the typed ``StageConfig`` (the model sections of
:class:`mosaic_alm.audio_lm.ALMConfig` + run identity, instruction data and the loop), its check, where a stage's run
folder is, what it starts from (``train.init_from``, the checksums of its sources) and which part of it must match
for a checkpoint to resume (:func:`trajectory_config`)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mosaic_alm.audio_lm import ALMConfig
from mosaic_alm.data import InstructionDataConfig
from mosaic_core.config import (
    ConfigError,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    parse_config,
    to_plain,
)
from mosaic_core.io import sha256_file

REPO = Path(__file__).resolve().parents[1]


STAGES = [REPO / "configs" / "alm" / f"stage{i}.yaml" for i in (1, 2, 3, 4)]


@dataclass
class StageTrainConfig:
    init_from: str | None = None  # None | "previous" | an artifact folder
    lr: PositiveFloat = 1e-3
    projector_lr: PositiveFloat | None = None  # the projector's own lr (LLaVA's mm_projector_lr); None: ``lr``
    weight_decay: float = 0.0
    epochs: PositiveFloat = 1.0
    max_steps: NonNegInt = 0  # > 0: exactly this many optimizer steps (epochs is then ignored)
    examples: NonNegInt = 0  # > 0: this many training examples in all: ceil(examples / global batch) steps
    batch_size: PositiveInt = 8
    grad_accum: PositiveInt = 1
    warmup_ratio: Probability = 0.05
    max_grad_norm: float = 1.0
    log_every: PositiveInt = 10
    eval_batches: NonNegInt = 4  # batches of the eval split for a held-out loss at the end (0: none)
    device: str = "auto"  # auto | cpu | cuda
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast where the GPU/CPU computes it natively
    deepspeed: str | None = None  # a DeepSpeed JSON (ZeRO 2/3)
    num_workers: NonNegInt = 0
    group_by_length: bool = True  # batches of examples of similar length (less padding; mosaic_alm.stage_data)
    ckpt_every: NonNegInt = 0  # > 0: a resumable checkpoint every N optimizer steps in {run}/checkpoints (0: none)
    keep_last: PositiveInt = 2  # checkpoints kept (older ones are deleted)
    # teaching the LLM to read its slots (mosaic_alm.align); both are skipped for a model without audio
    align_steps: NonNegInt = 0  # > 0: the projector alone first, fitted to the closed answers' word embeddings
    align_batch: PositiveInt = 256
    align_lr: PositiveFloat = 1e-3
    align_tau: PositiveFloat = 0.07
    align_pool: Literal["mean", "max"] = "mean"  # a clip's slots vs an option: the mean slot, or the best slot
    # first fraction of the steps: slots = alpha e(answer) + (1-alpha) audio, alpha 1 -> 0
    copy_warmup: Probability = 0.0

    def __post_init__(self):
        if self.examples > 0 and self.max_steps > 0:
            raise ValueError(f"give train.examples ({self.examples}) or train.max_steps ({self.max_steps}), not both")
        if self.copy_warmup >= 1:
            raise ValueError(f"train.copy_warmup must be below 1 (the last steps read plain audio), "
                             f"got {self.copy_warmup}")

    def total_steps(self, steps_per_epoch: int, world: int = 1) -> int:
        """Optimizer steps of the stage: ``examples`` over the global batch (batch x accumulation x ranks), else
        ``max_steps``, else ``epochs`` of the data."""
        if self.examples > 0:
            return math.ceil(self.examples / (self.batch_size * self.grad_accum * world))
        if self.max_steps > 0:
            return self.max_steps
        return int(math.ceil(self.epochs * steps_per_epoch))


@dataclass
class StageConfig(ALMConfig):
    """One ALM stage: run identity, instruction data and the loop, on top of the model sections of ALMConfig."""

    seed: int = 0
    name: str = "alm"
    stage: PositiveInt = 1
    output_dir: str = "runs/alm"
    data: InstructionDataConfig = field(default_factory=InstructionDataConfig)
    train: StageTrainConfig = field(default_factory=StageTrainConfig)


def check_stage_config(cfg: dict) -> StageConfig:
    """The typed stage config from a resolved config dict: every key, type, range and choice, and the combinations
    a stage cannot run; a ConfigError (one line) otherwise."""
    checked = parse_config(StageConfig, cfg, f"ALM stage {cfg.get('stage', '?')} config")
    audio, trainable = checked.audio, checked.trainable
    if checked.data.shards and audio.enabled and (trainable.encoder or not audio.cache_features):
        raise ConfigError("data.shards: clips from shards reach the model through the frozen-encoder token cache; "
                          "set trainable.encoder=false and audio.cache_features=true, or data.shards=null")
    if checked.train.align_steps and audio.enabled and trainable.encoder:
        raise ConfigError("train.align_steps fits the projector on cached frozen-encoder tokens; set "
                          "trainable.encoder=false or train.align_steps=0")
    return checked


def stage_config_dict(checked: StageConfig) -> dict:
    """The checked config as a plain JSON-like dict, every default filled in: what a run folder's ``config.yaml``, its
    checkpoints and its artifact record, so that a default changed in code shows as another config."""
    return json.loads(json.dumps(to_plain(checked), default=str))


def run_dir(cfg: StageConfig) -> Path:
    """``{output_dir}/{name}/stage{N}``: the stage's run folder."""
    return Path(cfg.output_dir) / cfg.name / f"stage{cfg.stage}"


def resolve_init(cfg: StageConfig) -> Path | None:
    """The artifact folder ``train.init_from`` names (``previous``: stage N-1's artifact of this run), or None."""
    init_from = cfg.train.init_from
    if init_from in (None, "", "none"):
        return None
    if init_from == "previous":
        return Path(cfg.output_dir) / cfg.name / f"stage{cfg.stage - 1}" / "artifact"
    return Path(init_from)


def stage_sources(cfg: StageConfig) -> dict:
    """What a stage starts from beyond its config, as checksums (recorded in ``summary.json``, so a finished stage
    is reused only while they hold): the encoder folder's model.safetensors (a stage without ``init_from``; None
    for a random encoder or no audio) and the ``init_from`` artifact's meta.json (rewritten whenever it trains)."""
    init = resolve_init(cfg)
    if init is None:
        weights = Path(str(cfg.audio.encoder)) / "model.safetensors"
        enc = sha256_file(weights) if cfg.audio.enabled and weights.is_file() else None
        return {"encoder_sha256": enc, "init_meta_sha256": None}
    meta = init / "meta.json"
    return {"encoder_sha256": None, "init_meta_sha256": sha256_file(meta) if meta.is_file() else None}


# train.* keys that do not change what a step computes: a run may resume with other values for them
RESUME_FREE_KEYS = ("ckpt_every", "keep_last", "log_every", "num_workers", "eval_batches")


def trajectory_config(cfg: StageConfig | dict) -> dict:
    """A checked config (typed, or as :func:`stage_config_dict` wrote it) less the keys in RESUME_FREE_KEYS,
    JSON-normalised: what must match to resume. Compared as written, not checked again, so a checkpoint written
    under another default (or before the config was saved checked) does not match."""
    c = json.loads(json.dumps(to_plain(cfg), default=str))
    c.pop("output_dir", None)  # the checkpoints live in the run folder: a moved folder still resumes
    for k in RESUME_FREE_KEYS:
        c.get("train", {}).pop(k, None)
    return c
