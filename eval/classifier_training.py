"""Fine-tuning pieces (AudioMAE-style): the encoder + linear head model, its layer-wise-decay optimizer, batch
augmentations (roll-and-magnitude, mixup, SpecAugment), the loss, scoring per task type, and saving. The loop that
uses them is the recipe ``recipes/finetune.py``."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from annotated_types import Interval

from encoder.data.tasks import Task
from encoder.data.views import ViewAugmentConfig, augment_view
from encoder.features import normalise
from encoder.vit import AudioMosaicViT, EncoderConfig
from mosaic_core.config import (
    ConfigError,
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Ratio,
)
from mosaic_core.io import atomic_write_with

from .augment import layerwise_lr_groups, mixup, roll_and_magnitude, spec_augment
from .metrics import accuracy, equal_error_rate, multilabel_summary

MAIN_METRIC = {"single_label": "accuracy", "multi_label": "mAP", "spoof": "EER"}  # EER: lower is better


@dataclass
class FinetuneModelConfig:
    encoder: str = "random"  # a folder written by pretraining (holds config.json + model.safetensors) or "random"
    size: Literal["tiny", "small", "base", "large"] = "tiny"  # random init: preset and overrides (0 = preset's)
    embed_dim: NonNegInt = 0
    depth: NonNegInt = 0
    num_heads: NonNegInt = 0
    drop_path: Ratio = 0.1  # stochastic depth while fine-tuning (also applied to a loaded encoder)
    head_dropout: Ratio = 0.0
    head_init_std: float = 2e-5  # MAE: a near-zero head so early updates do not wreck the pretrained features
    freeze_encoder: bool = False  # true = train the head only (a linear probe with this recipe's machinery)
    # probe: LP-FT - before fine-tuning, fit the fair linear read-out (standardised logistic regression, C on valid)
    # on the frozen encoder's pooled training features; its scaler becomes the running statistics of a BatchNorm
    # (no affine) before the head and its weights the head, so step 0 scores what the frozen probe scores
    head_init: Literal["random", "probe"] = "random"
    # head_init=probe: the read-out's C (0 = chosen on valid; a small C = a softer start)
    head_init_C: NonNegFloat = 0.0
    # a per-feature standardiser (BatchNorm without affine, MAE's linear-probe norm) between the pooled features and
    # the head; always on with head_init=probe. The pooled features of a ViT vary little between clips, so a
    # near-zero head on them learns slowly (keywords, 5 epochs from the pretrained tiny encoder: test 0.375 without,
    # 0.474 with; results/finetune_lpft/calibration.json)
    head_norm: bool = False


@dataclass
class FinetuneOptimConfig:
    epochs: PositiveInt = 60
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 1e-3  # peak learning rate of the head; block i gets lr * layer_decay ** (depth - i)
    min_lr: NonNegFloat = 1e-6
    warmup_epochs: NonNegFloat = 4.0
    layer_decay: Annotated[float, Interval(gt=0.0, le=1.0)] = 0.75
    weight_decay: NonNegFloat = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    samples_per_epoch: NonNegInt = 0  # 0 = one pass over the training set; AudioSet-2M uses a fixed epoch length
    balanced_sampler: bool = False  # class-balanced WeightedRandomSampler (multi-label: eval.augment weights)
    num_workers: NonNegInt = 0  # DataLoader workers (useful when spectrograms are not cached)


@dataclass
class SpecAugmentConfig:
    """Spectrogram-batch augmentations of fine-tuning (AudioMAE's): roll-and-magnitude, mixup, SpecAugment."""

    mixup_alpha: NonNegFloat = 0.0  # Beta(alpha, alpha) mixing; 0 = off
    mixup_prob: Probability = 1.0  # share of batches that are mixed
    time_mask: NonNegInt = 0  # SpecAugment: max width (frames) of a time band; 0 = off
    freq_mask: NonNegInt = 0  # max width (mel bins) of a frequency band; 0 = off
    n_masks: PositiveInt = 1  # bands per axis
    roll: bool = False  # roll-and-magnitude: circular time shift + random gain
    roll_max_shift: int = -1  # frames; -1 = the whole clip
    gain_db: list = field(default_factory=lambda: [-6.0, 6.0])
    views: ViewAugmentConfig = field(default_factory=ViewAugmentConfig)  # pretraining's per-view transforms


@dataclass
class FinetuneEvalConfig:
    batch_size: PositiveInt = 64
    every: PositiveInt = 1  # evaluate on valid every N epochs (and after the last)
    select: Literal["best_valid", "last"] = "best_valid"  # which weights are scored on the test splits


class FinetuneModel(nn.Module):
    """Encoder + linear head on the pooled output (fc_norm of the patch-token mean, CLS excluded)."""

    def __init__(self, encoder: AudioMosaicViT, num_outputs: int, head_dropout: float = 0.0,
                 head_init_std: float = 2e-5, head_norm: bool = False):
        super().__init__()
        self.encoder = encoder
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(encoder.cfg.embed_dim, num_outputs)
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)
        # a per-feature standardiser before the head (MAE's linear-probe BatchNorm without affine), when the head
        # starts from a probe: its running statistics start as the probe's scaler and follow the features as the
        # encoder moves (a frozen scaler divided drifting, nearly collinear features by tiny stds: loss 51 at epoch 1)
        self.head_norm = nn.BatchNorm1d(encoder.cfg.embed_dim, affine=False, eps=1e-6) if head_norm else nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled encoder output the head reads (before standardisation)."""
        return self.encoder.forward_features(x)["pooled"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.head_norm(self.features(x))))

    @torch.no_grad()
    def init_head_from_readout(self, readout) -> None:
        """Copy a fitted :class:`eval.probes.LogRegReadout` (single-label or spoof) into the standardiser and head:
        the model's logits then equal the read-out's decision scores (up to a per-row constant for two classes)."""
        scaler, clf = readout.model[0], readout.model[-1]
        if not hasattr(clf, "coef_"):
            raise ConfigError("model.head_init=probe needs a single-label (or spoof) task; multi-label heads start "
                              "from random init")
        norm = self.head_norm
        if not isinstance(norm, nn.BatchNorm1d):
            raise TypeError("init_head_from_readout: build the model with head_norm=True")
        norm.running_mean.copy_(torch.as_tensor(scaler.mean_, dtype=norm.running_mean.dtype))
        norm.running_var.copy_(torch.as_tensor(scaler.scale_, dtype=norm.running_var.dtype).pow(2))
        coef, bias = np.asarray(clf.coef_, dtype=np.float64), np.asarray(clf.intercept_, dtype=np.float64)
        if coef.shape[0] == 1:  # two classes: sklearn keeps one row (the second class's score)
            coef, bias = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], bias])
        w = torch.zeros_like(self.head.weight)
        b = torch.full_like(self.head.bias, float(bias.min()) - 10.0)  # a class never seen in training stays unlikely
        for row, label in enumerate(clf.classes_):
            w[int(label)] = torch.as_tensor(coef[row], dtype=w.dtype)
            b[int(label)] = float(bias[row])
        self.head.weight.copy_(w)
        self.head.bias.copy_(b)


def encoder_config(mc: FinetuneModelConfig) -> EncoderConfig:
    """The architecture: read from the checkpoint folder, or built from ``size`` / overrides for random init."""
    if mc.encoder == "random":
        try:
            return EncoderConfig(size=mc.size, embed_dim=mc.embed_dim, depth=mc.depth, num_heads=mc.num_heads,
                                 drop_path=mc.drop_path)
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from None
    from encoder.hf import AudioMosaicConfig, load_release
    from encoder.release import is_release

    if is_release(mc.encoder):  # one of the paper's released checkpoints, read as it is
        return dataclasses.replace(load_release(mc.encoder, cls=None).config.to_encoder_config(),
                                   drop_path=mc.drop_path)
    folder = Path(mc.encoder)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.encoder: {folder} has no config.json (expected a folder written by pretraining, "
                          f"e.g. runs/pretrain-tiny/encoder, an imported or released AudioMosaic model, or 'random')")
    cfg = AudioMosaicConfig.from_pretrained(str(folder)).to_encoder_config()
    return dataclasses.replace(cfg, drop_path=mc.drop_path)


def build_finetune_model(mc: FinetuneModelConfig, enc_cfg: EncoderConfig, num_outputs: int) -> FinetuneModel:
    enc = AudioMosaicViT(enc_cfg)
    if mc.encoder != "random":
        from encoder.hf import AudioMosaicModel

        enc.load_state_dict(AudioMosaicModel.from_pretrained(mc.encoder).encoder.state_dict())
    model = FinetuneModel(enc, num_outputs, mc.head_dropout, mc.head_init_std,
                          head_norm=mc.head_norm or mc.head_init == "probe")
    if mc.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    return model


def trainable_summary(model: nn.Module) -> dict[str, dict[str, int]]:
    """Parameter counts (trainable / total) per top-level module (encoder parts separately)."""
    out: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] == "encoder" else parts[0]
        if key.startswith("encoder.blocks"):
            key = "encoder.blocks"
        c = out.setdefault(key, {"trainable": 0, "total": 0})
        c["total"] += p.numel()
        c["trainable"] += p.numel() if p.requires_grad else 0
    return out


def build_optimizer(model: FinetuneModel, oc: FinetuneOptimConfig) -> torch.optim.AdamW:
    """AdamW over layer-wise lr-decay groups: head/norms at ``lr``, block i at ``lr * decay ** (depth - i)``,
    patch embedding / CLS at ``lr * decay ** (depth + 1)``; no weight decay on biases, norms and tokens."""
    groups = layerwise_lr_groups(model.named_parameters(), len(model.encoder.blocks), oc.lr, oc.layer_decay,
                                 oc.weight_decay)
    return torch.optim.AdamW(groups, lr=oc.lr, betas=tuple(oc.betas))


def augment_batch(x: torch.Tensor, y: torch.Tensor, ac: SpecAugmentConfig, task: Task,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """view transforms -> roll-and-magnitude -> mixup -> SpecAugment on a [B, T, F] batch; returns soft targets
    [B, C]."""
    if ac.views.enabled:
        x = view_transform_batch(x, ac.views, task.fbank.mean, task.fbank.std, gen)
    if ac.roll:
        per_db = math.log(10.0) / 10.0 / (2.0 * task.fbank.std)  # gain on the (x - mean) / (2 std) scale
        x = roll_and_magnitude(x, max_shift=None if ac.roll_max_shift < 0 else ac.roll_max_shift,
                               gain_db=tuple(ac.gain_db), log_units_per_db=per_db, generator=gen)
    alpha = ac.mixup_alpha if ac.mixup_alpha > 0 and float(torch.rand((), generator=gen)) < ac.mixup_prob else 0.0
    x, y = mixup(x, y, alpha, num_classes=task.num_outputs, generator=gen)
    if ac.time_mask or ac.freq_mask:
        x = spec_augment(x, ac.time_mask, ac.freq_mask, ac.n_masks, generator=gen)
    return x, y


def view_transform_batch(x: torch.Tensor, cfg: ViewAugmentConfig, mean: float, std: float,
                         gen: torch.Generator) -> torch.Tensor:
    """Each clip of a normalised [B, T, F] batch under its own draw of the pretraining view transforms
    (:mod:`encoder.data.views`: rate, vocal tract, room, noise, channel, level; another clip of the batch mixed in)."""
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=gen)))
    raw = x * (2.0 * std) + mean  # back to log-mel energies
    out = [augment_view(raw[i], x.shape[1], cfg, rng, lambda: raw[int(rng.integers(len(raw)))])
           for i in range(len(raw))]
    return normalise(torch.stack(out), mean, std).to(x.dtype)


def loss_fn(logits: torch.Tensor, soft: torch.Tensor, task_type: str) -> torch.Tensor:
    if task_type == "multi_label":
        return F.binary_cross_entropy_with_logits(logits, soft)
    return -(soft * F.log_softmax(logits, dim=-1)).sum(-1).mean()


@torch.no_grad()
def predict_batches(model: nn.Module, loader, forward=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs, targets) over ``loader`` in eval mode; ``forward`` (default: the model) maps a batch to outputs."""
    model.eval()
    forward = forward or model
    logits, targets = [], []
    for x, y in loader:
        logits.append(forward(x).float())
        targets.append(y)
    return torch.cat(logits), torch.cat(targets)


def score(logits: torch.Tensor, targets: torch.Tensor, task: Task) -> dict[str, float]:
    """Task metrics plus the loss: accuracy | mAP, AUC, d' | EER (bona fide = positive), accuracy."""
    if task.task_type == "multi_label":
        out = dict(multilabel_summary(targets.numpy(), torch.sigmoid(logits).numpy()))
        out["loss"] = float(F.binary_cross_entropy_with_logits(logits, targets.float()))
        return out
    out = {"accuracy": accuracy(targets.numpy(), logits.argmax(1).numpy()),
           "loss": float(F.cross_entropy(logits, targets))}
    if task.task_type == "spoof":
        pos = task.classes.index(task.bonafide_label)
        logp = F.log_softmax(logits, dim=-1)
        s = (logp[:, pos] - logp[:, 1 - pos]).numpy()
        out["EER"] = equal_error_rate((targets == pos).long().numpy(), s)
    return out


def is_better(a: float, b: float | None, metric: str) -> bool:
    return b is None or (a < b if metric == "EER" else a > b)


def save_finetuned(model: FinetuneModel, task: Task, path: Path) -> None:
    """Encoder + head as safetensors; the metadata holds the encoder config, classes and fbank settings."""
    from safetensors.torch import save_file

    meta = {"encoder_config": json.dumps(dataclasses.asdict(model.encoder.cfg)), "classes": json.dumps(task.classes),
            "task_type": task.task_type, "fbank": json.dumps(dataclasses.asdict(task.fbank))}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(path, lambda tmp: save_file(state, str(tmp), metadata=meta))
