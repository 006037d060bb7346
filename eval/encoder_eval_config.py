"""The typed config of the encoder evaluation (``mosaic-alm eval-encoder``, configs/eval/*.yaml): which encoders,
which tasks, which probes and how they are fitted. A library piece so that a job that runs the evaluation (the
pipeline) can build and check the same config without importing the evaluation's recipe."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mosaic_core.config import NonNegInt, PositiveFloat, PositiveInt


@dataclass
class ProbeFitConfig:
    epochs: PositiveInt = 60
    lr: PositiveFloat = 1e-3
    weight_decay: float = 0.05
    batch_size: PositiveInt = 256


@dataclass
class EncoderEvalConfig:
    seed: int = 0
    run_dir: str = "runs/eval-encoder"
    data_root: str = "data/embedded-full"
    tasks: list[str] = field(default_factory=list)  # data recipes (configs/data/*.yaml)
    encoders: dict[str, str] = field(default_factory=dict)  # name -> folder, "random" or "random:<size>"
    mfcc_baseline: bool = True
    probes: list[Literal["linear", "weighted", "attentive"]] = field(default_factory=lambda: ["linear"])
    layer_sweep: bool = True  # linear probe on every layer (probe accuracy by layer)
    probe: ProbeFitConfig = field(default_factory=ProbeFitConfig)
    probe_seeds: list[int] = field(default_factory=lambda: [0])
    # the few-label protocol (eval/few_label.py): the linear read-out on k labelled training clips per class, for
    # each k here, over several draws of the subset (mean ± std); [] = off. The all-label read-out is the "linear" one
    few_labels: list[PositiveInt] = field(default_factory=lambda: [1, 5, 10, 20])
    few_label_draws: PositiveInt = 3
    max_clips_per_split: NonNegInt = 0  # > 0 subsamples each split (quick runs)
    batch_size: PositiveInt = 64
    threads: NonNegInt = 0  # torch threads (tiny probes run fastest on one thread; 0 = default)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # feature extraction and probe fits; auto: bf16 where the
    #                                                      CPU/GPU computes it natively
