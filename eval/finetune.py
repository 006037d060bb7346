"""Full fine-tuning of the AudioMosaic encoder: one recipe in one file (AudioMAE-style).

    python -m eval.finetune --config configs/finetune/embedded_keywords.yaml optim.epochs=5 model.encoder=runs/x/encoder

What it does, top to bottom:

1. **Config** — a YAML recipe (``configs/finetune/*.yaml``) plus dotted ``key=value`` overrides, turned into the
   :class:`FinetuneConfig` dataclasses; an unknown key anywhere (recipe, override or data recipe) is an error.
2. **Task** — a data recipe (``configs/data/*.yaml``, optionally patched by ``task.data``) names the clips: a JSON-lines
   manifest (``format: manifest``, the default), AudioSet JSON, ESC-50 or Speech Commands (see
   :mod:`encoder.data.public`). Each task has its own ``target_frames``. Task types: ``single_label`` (accuracy),
   ``multi_label`` (mAP, AUC, d-prime), ``spoof`` (binary bona fide / spoof: EER, accuracy). Normalised spectrograms
   are computed once per clip and kept in memory when the set is small (``task.cache``), else computed per batch.
3. **Model** — :class:`encoder.model.AudioMosaicViT` from a folder written by pretraining (``run/encoder``) or random
   init, plus a linear head on the pooled output (fc_norm of the mean over patch tokens, CLS excluded).
4. **Training** — train-time augmentations on spectrogram batches (roll-and-magnitude, mixup, SpecAugment; each can
   be switched off), AdamW with layer-wise lr decay (:func:`eval.augment.layerwise_lr_groups`) and a per-step
   linear-warmup + cosine schedule, an optional class-balanced ``WeightedRandomSampler`` (AudioSet-2M). Loss: soft-target
   cross-entropy (single-label, spoof) or BCE (multi-label).
5. **Evaluation** — every ``eval.every`` epochs on ``valid`` (the model with the best valid metric is kept when
   ``eval.select: best_valid``), finally on every ``test*`` split. ``task.folds`` runs cross-validation (ESC-50: five
   folds, each held out once, no valid split, last epoch scored) and averages.
6. **Outputs** (``run_dir``) — ``config.yaml`` (resolved), ``finetune.json`` (via :func:`eval.report.write_results`:
   numbers, config, seed, commit, versions), ``finetune.md/.html`` with training curves, TensorBoard events under
   ``tb/`` and, with ``save_model: true``, ``model.safetensors`` (encoder + head, config in the metadata).

One ``seed`` seeds Python, NumPy and torch, the shuffling/sampling generator and the augmentation generator.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from encoder.config import ConfigError, from_dict, load_config, read_yaml, save_yaml
from encoder.data.manifest import ManifestError, load_classes, read_manifest
from encoder.features import AudioError, FbankConfig, load_audio, waveform_to_input
from encoder.model import AudioMosaicViT, EncoderConfig
from encoder.train import warmup_cosine

from .augment import class_balanced_weights, layerwise_lr_groups, mixup, roll_and_magnitude, spec_augment
from .metrics import accuracy, equal_error_rate, multilabel_summary
from .report import plot_training_curves, write_report, write_results

TASK_TYPES = ("single_label", "multi_label", "spoof")
MAIN_METRIC = {"single_label": "accuracy", "multi_label": "mAP", "spoof": "EER"}  # EER: lower is better


# ================================================================================================== configuration
@dataclass
class TaskConfig:
    config: str = ""  # a data recipe (configs/data/*.yaml); may be empty when ``data`` holds everything
    data: dict = field(default_factory=dict)  # keys merged over the data recipe (e.g. paths, version)
    data_root: str = ""  # root of a manifest-format task ("" = the data recipe's data_root)
    task_type: str = ""  # single_label | multi_label | spoof ("" = from the recipe: task_type, else multi_label)
    target_frames: int = 0  # 0 = the data recipe's target_frames
    folds: list = field(default_factory=list)  # cross-validation folds ([] = use the recipe's splits)
    bonafide_label: str = "bonafide"  # spoof tasks: the positive (bona fide) class name
    cache: str = "auto"  # auto | always | never: keep spectrograms in memory
    cache_max_gb: float = 4.0  # "auto" caches when the float32 spectrograms fit in this
    max_clips_per_split: int = 0  # > 0 subsamples each split (quick runs)

    def __post_init__(self):
        if self.task_type not in ("",) + TASK_TYPES:
            raise ValueError(f"task_type {self.task_type!r}; choose from {', '.join(TASK_TYPES)}")
        if self.cache not in ("auto", "always", "never"):
            raise ValueError(f"cache {self.cache!r}; choose auto, always or never")


@dataclass
class ModelConfig:
    encoder: str = "random"  # a folder written by pretraining (holds config.json + model.safetensors) or "random"
    size: str = "tiny"  # random init only: preset and overrides (0 = the preset's value)
    embed_dim: int = 0
    depth: int = 0
    num_heads: int = 0
    drop_path: float = 0.1  # stochastic depth while fine-tuning (also applied to a loaded encoder)
    head_dropout: float = 0.0
    head_init_std: float = 2e-5  # MAE: a near-zero head so early updates do not wreck the pretrained features
    freeze_encoder: bool = False  # true = train the head only (a linear probe with this recipe's machinery)


@dataclass
class OptimConfig:
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3  # peak learning rate of the head; block i gets lr * layer_decay ** (depth - i)
    min_lr: float = 1e-6
    warmup_epochs: float = 4.0
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    samples_per_epoch: int = 0  # 0 = one pass over the training set; AudioSet-2M uses a fixed epoch length
    balanced_sampler: bool = False  # class-balanced WeightedRandomSampler (multi-label: eval.augment weights)
    num_workers: int = 0  # DataLoader workers (useful when spectrograms are not cached)


@dataclass
class AugmentConfig:
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing; 0 = off
    mixup_prob: float = 1.0  # share of batches that are mixed
    time_mask: int = 0  # SpecAugment: max width (frames) of a time band; 0 = off
    freq_mask: int = 0  # max width (mel bins) of a frequency band; 0 = off
    n_masks: int = 1  # bands per axis
    roll: bool = False  # roll-and-magnitude: circular time shift + random gain
    roll_max_shift: int = -1  # frames; -1 = the whole clip
    gain_db: list = field(default_factory=lambda: [-6.0, 6.0])


@dataclass
class EvalConfig:
    batch_size: int = 64
    every: int = 1  # evaluate on valid every N epochs (and after the last)
    select: str = "best_valid"  # best_valid | last: which weights are scored on the test splits

    def __post_init__(self):
        if self.select not in ("best_valid", "last"):
            raise ValueError(f"select {self.select!r}; choose best_valid or last")
        if self.every < 1:
            raise ValueError("every must be >= 1")


@dataclass
class FinetuneConfig:
    seed: int = 0
    run_dir: str = "runs/finetune"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    tensorboard: bool = True
    save_model: bool = False
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def from_dict(cls, data: dict) -> "FinetuneConfig":
        sections = {"task": TaskConfig, "model": ModelConfig, "optim": OptimConfig, "augment": AugmentConfig,
                    "eval": EvalConfig}
        data = dict(data or {})
        top = from_dict(cls, {k: v for k, v in data.items() if k not in sections}, "finetune config")
        for name, kind in sections.items():
            value = data.get(name) or {}
            if not isinstance(value, dict):
                raise ConfigError(f"finetune config: section {name!r} must be a mapping")
            setattr(top, name, from_dict(kind, value, f"finetune config section {name!r}"))
        return top


def build_config(path: str, overrides=()) -> FinetuneConfig:
    return FinetuneConfig.from_dict(load_config(path, overrides))


# ========================================================================================================= task
# Keys a data recipe may carry, by format (anything else is a typo).
_COMMON = {"name", "format", "num_classes", "target_frames", "multi_label", "task_type"}
_FORMAT_KEYS = {
    "manifest": {"data_root", "manifest", "classes", "splits"},
    "audioset": {"train_json", "eval_json", "valid_json", "label_csv"},
    "esc50": {"root", "folds"},
    "speech_commands": {"root", "version", "twelve_class"},
}


@dataclass
class Task:
    """Every clip of a task with its target; ``specs`` holds the cached spectrograms (or None)."""

    name: str
    task_type: str
    classes: list
    rows: list
    targets: torch.Tensor  # [N] class indices, or [N, C] multi-hot floats (multi_label)
    splits: dict  # role -> LongTensor of row indices (train, valid, test*)
    folds: dict  # fold -> LongTensor of row indices (cross-validation), else {}
    fbank: FbankConfig
    bonafide_label: str = "bonafide"  # spoof tasks: the positive class
    specs: torch.Tensor | None = None
    bad_clips: list = field(default_factory=list)

    @property
    def num_outputs(self) -> int:
        return len(self.classes)


def _data_recipe(tc: TaskConfig) -> dict:
    d = read_yaml(tc.config) if tc.config else {}
    d.update(copy.deepcopy(tc.data))
    fmt = d.get("format", "manifest")
    if fmt not in _FORMAT_KEYS:
        raise ConfigError(f"data recipe {tc.config or 'task.data'}: unknown format {fmt!r}; "
                          f"choose from {sorted(_FORMAT_KEYS)}")
    unknown = sorted(set(d) - _COMMON - _FORMAT_KEYS[fmt])
    if unknown:
        raise ConfigError(f"data recipe {tc.config or 'task.data'}: unknown key(s) {unknown} for format {fmt!r}")
    if "name" not in d:
        raise ConfigError(f"data recipe {tc.config or 'task.data'}: needs a name")
    return d


def _rows_and_classes(d: dict, tc: TaskConfig) -> tuple[list, list, dict]:
    """(rows, classes, role -> split name) for any supported format."""
    fmt = d.get("format", "manifest")
    if fmt == "manifest":
        for k in ("manifest",) if tc.folds else ("manifest", "splits"):
            if k not in d:
                raise ConfigError(f"task {d['name']}: a manifest recipe needs {k!r}")
        root = Path(tc.data_root or d.get("data_root") or ".")
        cls = d.get("classes")
        if isinstance(cls, list):
            classes = [str(c) for c in cls]
        elif cls:
            classes = load_classes(root / cls)
        elif d.get("task_type", tc.task_type) == "spoof":
            classes = [tc.bonafide_label, "spoof"]
        else:
            raise ConfigError(f"task {d['name']}: needs 'classes' (a classes.json path or a list)")
        rows = read_manifest(root / d["manifest"], classes=classes)
        return rows, classes, dict(d.get("splits") or {})
    from encoder.data import public

    if fmt == "audioset":
        labels = public.load_audioset_labels(d["label_csv"])
        classes = [c["display_name"] for c in labels]
        rows, splits = [], {}
        for role, key in (("train", "train_json"), ("valid", "valid_json"), ("test", "eval_json")):
            if d.get(key):
                part = public.load_audioset(d[key], d["label_csv"], split=role)
                for r in part:
                    r["id"] = f"{role}/{r['id']}"
                rows += part
                splits[role] = role
        return rows, classes, splits
    if fmt == "esc50":
        rows = public.load_esc50(d["root"])
        classes = sorted({r["label"] for r in rows}, key=lambda c: min(r["target"] for r in rows if r["label"] == c))
        return rows, classes, {}
    rows = public.load_speech_commands(d["root"], int(d.get("version", 2)), twelve_class=bool(d.get("twelve_class")))
    classes = sorted({r["label"] for r in rows})
    return rows, classes, {"train": "train", "valid": "valid", "test": "test"}


def _fold_of(row: dict) -> int | None:
    if "fold" in row:
        return int(row["fold"])
    s = str(row.get("split", ""))
    return int(s[4:]) if s.startswith("fold") and s[4:].isdigit() else None


def load_task(tc: TaskConfig, enc_cfg: EncoderConfig, seed: int = 0) -> Task:
    """Read the task's clips and targets (spectrograms are added by :func:`cache_spectrograms`)."""
    d = _data_recipe(tc)
    task_type = tc.task_type or d.get("task_type") or ("multi_label" if d.get("multi_label") else "single_label")
    if task_type not in TASK_TYPES:
        raise ConfigError(f"task {d['name']}: task_type {task_type!r}; choose from {', '.join(TASK_TYPES)}")
    rows, classes, role_split = _rows_and_classes(d, tc)
    if d.get("num_classes") and int(d["num_classes"]) != len(classes):
        raise ConfigError(f"task {d['name']}: num_classes is {d['num_classes']} but the class list has {len(classes)}")
    if task_type == "spoof":
        if tc.bonafide_label not in classes or len(classes) != 2:
            raise ConfigError(f"task {d['name']}: a spoof task needs exactly two classes including "
                              f"{tc.bonafide_label!r} (got {classes})")
    index = {c: i for i, c in enumerate(classes)}
    if task_type == "multi_label":
        y = torch.zeros(len(rows), len(classes))
        for i, r in enumerate(rows):
            if "label_indices" in r:
                idx = r["label_indices"]
            else:
                labs = r.get("labels", r.get("label"))
                idx = [index[lab] for lab in (labs if isinstance(labs, list) else [labs])]
            y[i, idx] = 1.0
    else:
        bad = [r["id"] for r in rows if isinstance(r.get("label"), list)]
        if bad:
            raise ConfigError(f"task {d['name']}: clip {bad[0]!r} has several labels; set task_type: multi_label")
        y = torch.tensor([index[r["label"]] for r in rows], dtype=torch.long)

    rng = np.random.default_rng(seed)

    def pick(idx: list[int]) -> torch.Tensor:
        if tc.max_clips_per_split and len(idx) > tc.max_clips_per_split:
            idx = sorted(rng.permutation(idx)[: tc.max_clips_per_split].tolist())
        return torch.tensor(idx, dtype=torch.long)

    splits, folds = {}, {}
    if tc.folds:
        by_fold: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            f = _fold_of(r)
            if f is not None:
                by_fold.setdefault(f, []).append(i)
        for f in tc.folds:
            if int(f) not in by_fold:
                raise ConfigError(f"task {d['name']}: no clips in fold {f} (rows need a 'fold' field or split 'fold{f}')")
            folds[int(f)] = pick(by_fold[int(f)])
    else:
        if not role_split:
            raise ConfigError(f"task {d['name']}: format {d.get('format')} is cross-validated; set task.folds")
        for role, name in role_split.items():
            idx = [i for i, r in enumerate(rows) if r["split"] == name]
            if idx:
                splits[role] = pick(idx)
        for need in ("train",):
            if need not in splits:
                raise ConfigError(f"task {d['name']}: no clips in the train split {role_split.get(need)!r}")
        if not any(r.startswith("test") for r in splits):
            raise ConfigError(f"task {d['name']}: no test split with clips (roles starting with 'test')")
    frames = int(tc.target_frames or d.get("target_frames") or enc_cfg.target_frames)
    if frames <= 0 or frames % enc_cfg.patch_size:
        raise ConfigError(f"task {d['name']}: target_frames {frames} must be a positive multiple of "
                          f"{enc_cfg.patch_size}")
    fb = FbankConfig(sample_rate=enc_cfg.sample_rate, num_mel_bins=enc_cfg.num_mel_bins, target_frames=frames,
                     mean=enc_cfg.norm_mean, std=enc_cfg.norm_std)
    return Task(d["name"], task_type, classes, rows, y, splits, folds, fb, tc.bonafide_label)


def _spectrogram(row: dict, fb: FbankConfig) -> torch.Tensor:
    return waveform_to_input(load_audio(row["path"], fb.sample_rate, fb.max_seconds), fb, source=row["path"])


def cache_spectrograms(task: Task, tc: TaskConfig) -> None:
    """Compute each used clip's spectrogram once and keep it (policy ``tc.cache``); drop clips that fail to decode."""
    used = torch.unique(torch.cat(list(task.splits.values()) + list(task.folds.values())))
    gb = len(used) * task.fbank.target_frames * task.fbank.num_mel_bins * 4 / 1e9
    if tc.cache == "never" or (tc.cache == "auto" and gb > tc.cache_max_gb):
        print(f"[finetune] {task.name}: spectrograms computed per batch ({gb:.1f} GB would not be cached)", flush=True)
        return
    from tqdm import tqdm

    specs = torch.zeros(len(task.rows), task.fbank.target_frames, task.fbank.num_mel_bins)
    ok = torch.zeros(len(task.rows), dtype=torch.bool)
    for i in tqdm(used.tolist(), desc=f"spectrograms {task.name}", dynamic_ncols=True, mininterval=2.0):
        try:
            specs[i] = _spectrogram(task.rows[i], task.fbank)
            ok[i] = True
        except AudioError as exc:
            task.bad_clips.append({"id": task.rows[i]["id"], "error": str(exc)})
    task.specs = specs
    if task.bad_clips:
        print(f"[finetune] {task.name}: skipping {len(task.bad_clips)} clip(s) that cannot be decoded, e.g. "
              f"{task.bad_clips[0]['error']}", flush=True)
        task.splits = {k: v[ok[v]] for k, v in task.splits.items()}
        task.folds = {k: v[ok[v]] for k, v in task.folds.items()}


class ClipSet(torch.utils.data.Dataset):
    """(spectrogram [T, F], target) for the given rows of a task; cached or computed on the fly."""

    def __init__(self, task: Task, indices: torch.Tensor):
        self.task, self.indices = task, indices.tolist()

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        i = self.indices[k]
        t = self.task
        if t.specs is not None:
            x = t.specs[i]
        else:
            try:
                x = _spectrogram(t.rows[i], t.fbank)
            except AudioError as exc:  # one broken file must not end a two-day AudioSet run
                print(f"[finetune] warning: {exc}; using silence", file=sys.stderr, flush=True)
                x = torch.zeros(t.fbank.target_frames, t.fbank.num_mel_bins)
        return x, t.targets[i]


# ======================================================================================================== model
class FinetuneModel(nn.Module):
    """Encoder + linear head on the pooled output (fc_norm of the patch-token mean, CLS excluded)."""

    def __init__(self, encoder: AudioMosaicViT, num_outputs: int, head_dropout: float = 0.0,
                 head_init_std: float = 2e-5):
        super().__init__()
        self.encoder = encoder
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(encoder.cfg.embed_dim, num_outputs)
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.encoder.forward_features(x)["pooled"]))


def encoder_config(mc: ModelConfig) -> EncoderConfig:
    """The architecture: read from the checkpoint folder, or built from ``size`` / overrides for random init."""
    if mc.encoder == "random":
        try:
            return EncoderConfig(size=mc.size, embed_dim=mc.embed_dim, depth=mc.depth, num_heads=mc.num_heads,
                                 drop_path=mc.drop_path)
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from None
    folder = Path(mc.encoder)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.encoder: {folder} has no config.json (expected a folder written by pretraining, "
                          f"e.g. runs/pretrain-tiny/encoder, or 'random')")
    from encoder.hf import AudioMosaicConfig

    cfg = AudioMosaicConfig.from_pretrained(str(folder)).to_encoder_config()
    return dataclasses.replace(cfg, drop_path=mc.drop_path)


def build_model(mc: ModelConfig, enc_cfg: EncoderConfig, num_outputs: int) -> FinetuneModel:
    enc = AudioMosaicViT(enc_cfg)
    if mc.encoder != "random":
        from encoder.hf import AudioMosaicModel

        enc.load_state_dict(AudioMosaicModel.from_pretrained(mc.encoder).encoder.state_dict())
    model = FinetuneModel(enc, num_outputs, mc.head_dropout, mc.head_init_std)
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


def build_optimizer(model: FinetuneModel, oc: OptimConfig) -> torch.optim.AdamW:
    """AdamW over layer-wise lr-decay groups: head/norms at ``lr``, block i at ``lr * decay ** (depth - i)``,
    patch embedding / CLS at ``lr * decay ** (depth + 1)``; no weight decay on biases, norms and tokens."""
    groups = layerwise_lr_groups(model.named_parameters(), len(model.encoder.blocks), oc.lr, oc.layer_decay,
                                 oc.weight_decay)
    return torch.optim.AdamW(groups, lr=oc.lr, betas=tuple(oc.betas))


lr_at = warmup_cosine  # the pretraining schedule: linear warm-up, then half-cosine to min_lr


# ================================================================================================ train / eval
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def augment_batch(x: torch.Tensor, y: torch.Tensor, ac: AugmentConfig, task: Task,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """roll-and-magnitude -> mixup -> SpecAugment on a [B, T, F] batch; returns soft targets [B, C]."""
    if ac.roll:
        per_db = math.log(10.0) / 10.0 / (2.0 * task.fbank.std)  # gain on the (x - mean) / (2 std) scale
        x = roll_and_magnitude(x, max_shift=None if ac.roll_max_shift < 0 else ac.roll_max_shift,
                               gain_db=tuple(ac.gain_db), log_units_per_db=per_db, generator=gen)
    alpha = ac.mixup_alpha if ac.mixup_alpha > 0 and float(torch.rand((), generator=gen)) < ac.mixup_prob else 0.0
    x, y = mixup(x, y, alpha, num_classes=task.num_outputs, generator=gen)
    if ac.time_mask or ac.freq_mask:
        x = spec_augment(x, ac.time_mask, ac.freq_mask, ac.n_masks, generator=gen)
    return x, y


def loss_fn(logits: torch.Tensor, soft: torch.Tensor, task_type: str) -> torch.Tensor:
    if task_type == "multi_label":
        return F.binary_cross_entropy_with_logits(logits, soft)
    return -(soft * F.log_softmax(logits, dim=-1)).sum(-1).mean()


@torch.no_grad()
def predict(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    logits, targets = [], []
    for x, y in loader:
        logits.append(model(x).float())
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


def _better(a: float, b: float | None, metric: str) -> bool:
    return b is None or (a < b if metric == "EER" else a > b)


def _loader(task: Task, idx: torch.Tensor, batch_size: int, workers: int, sampler=None):
    return torch.utils.data.DataLoader(ClipSet(task, idx), batch_size=batch_size, sampler=sampler,
                                       num_workers=workers, shuffle=False)


def train_and_test(cfg: FinetuneConfig, task: Task, enc_cfg: EncoderConfig, train_idx: torch.Tensor,
                   valid_idx: torch.Tensor | None, tests: dict[str, torch.Tensor], run: Path,
                   tag: str = "") -> dict[str, Any]:
    """Fine-tune a fresh model on ``train_idx``; select on ``valid_idx``; score every test split."""
    oc, ac, ec = cfg.optim, cfg.augment, cfg.eval
    seed_everything(cfg.seed)
    model = build_model(cfg.model, enc_cfg, task.num_outputs)
    counts = trainable_summary(model)
    print(f"[finetune] {task.name}{tag}: trainable parameters " + ", ".join(
        f"{k} {v['trainable']:,}/{v['total']:,}" for k, v in counts.items()), flush=True)
    opt = build_optimizer(model, oc)

    gen = torch.Generator().manual_seed(cfg.seed + 1)  # augmentations
    sgen = torch.Generator().manual_seed(cfg.seed + 2)  # shuffling / sampling
    n_train = len(train_idx)
    per_epoch = oc.samples_per_epoch or n_train
    if oc.balanced_sampler:
        y = task.targets[train_idx]
        if task.task_type != "multi_label":
            y = F.one_hot(y, task.num_outputs)
        sampler = torch.utils.data.WeightedRandomSampler(class_balanced_weights(y), per_epoch, replacement=True,
                                                         generator=sgen)
    else:
        sampler = torch.utils.data.RandomSampler(ClipSet(task, train_idx), num_samples=per_epoch, generator=sgen)
    train_loader = _loader(task, train_idx, oc.batch_size, oc.num_workers, sampler)
    eval_loader = lambda idx: _loader(task, idx, ec.batch_size, oc.num_workers)  # noqa: E731
    steps_per_epoch = math.ceil(per_epoch / oc.batch_size)
    total, warmup = oc.epochs * steps_per_epoch, int(round(oc.warmup_epochs * steps_per_epoch))

    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb" / (tag.strip(" /") or "run")))
    metric = MAIN_METRIC[task.task_type]
    select_on = valid_idx if valid_idx is not None and len(valid_idx) else None
    curve_on, curve_name = (select_on, "valid") if select_on is not None else (next(iter(tests.values())),
                                                                               next(iter(tests)))
    history: dict[str, list] = {"train_loss": [], f"{curve_name}_loss": [], f"{curve_name}_{metric}": [], "lr": []}
    best, best_state, best_epoch, step = None, None, oc.epochs, 0
    from tqdm import tqdm

    t0 = time.time()
    for epoch in range(1, oc.epochs + 1):
        model.train()
        losses = []
        for x, y in tqdm(train_loader, desc=f"{task.name}{tag} epoch {epoch}/{oc.epochs}", leave=False,
                         dynamic_ncols=True, mininterval=5.0, disable=None):
            lr = lr_at(step, total, warmup, oc.lr, oc.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            x, soft = augment_batch(x, y, ac, task, gen)
            loss = loss_fn(model(x), soft, task.task_type)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if oc.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), oc.grad_clip)
            opt.step()
            losses.append(loss.item())
            step += 1
        history["train_loss"].append(float(np.mean(losses)))
        history["lr"].append(lr)
        if writer:
            writer.add_scalar("train/loss", history["train_loss"][-1], epoch)
            writer.add_scalar("train/lr", lr, epoch)
        if epoch % ec.every == 0 or epoch == oc.epochs:
            m = score(*predict(model, eval_loader(curve_on)), task)
            history[f"{curve_name}_loss"].append(m["loss"])
            history[f"{curve_name}_{metric}"].append(m[metric])
            if writer:
                for k, v in m.items():
                    writer.add_scalar(f"{curve_name}/{k}", v, epoch)
            print(f"[finetune] {task.name}{tag} epoch {epoch}: train loss {history['train_loss'][-1]:.4f}, "
                  f"{curve_name} {metric} {m[metric]:.4f}", flush=True)
            if select_on is not None and ec.select == "best_valid" and _better(m[metric], best, metric):
                best, best_epoch = m[metric], epoch
                best_state = copy.deepcopy(model.state_dict())
    if writer:
        writer.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    results = {role: score(*predict(model, eval_loader(idx)), task) for role, idx in tests.items()}
    out = {"test": results, "selected_epoch": best_epoch if best_state is not None else oc.epochs,
           "history": history, "train_seconds": time.time() - t0, "n_train": n_train,
           "n_valid": 0 if select_on is None else len(select_on), "n_test": {k: len(v) for k, v in tests.items()},
           "trainable_parameters": counts}
    if select_on is not None and best is not None:
        out[f"valid_{metric}"] = best
    if cfg.save_model:
        save_model(model, task, cfg, run / (tag.strip(" /") or ".") / "model.safetensors")
    return out


def save_model(model: FinetuneModel, task: Task, cfg: FinetuneConfig, path: Path) -> None:
    """Encoder + head as safetensors; the metadata holds the encoder config, classes and fbank settings."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"encoder_config": json.dumps(dataclasses.asdict(model.encoder.cfg)), "classes": json.dumps(task.classes),
            "task_type": task.task_type, "fbank": json.dumps(dataclasses.asdict(task.fbank))}
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def _mean_std(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


# =========================================================================================================== run
def finetune(cfg: FinetuneConfig, raw: dict | None = None) -> dict[str, Any]:
    """Run the recipe; returns the numbers written to ``{run_dir}/finetune.json``."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    resolved = raw if raw is not None else dataclasses.asdict(cfg)
    save_yaml(resolved, run / "config.yaml")
    enc_cfg = encoder_config(cfg.model)
    task = load_task(cfg.task, enc_cfg, cfg.seed)
    cache_spectrograms(task, cfg.task)
    metric = MAIN_METRIC[task.task_type]
    t0 = time.time()
    numbers: dict[str, Any] = {"task": task.name, "task_type": task.task_type, "metric": metric,
                               "classes": task.classes, "target_frames": task.fbank.target_frames,
                               "encoder": cfg.model.encoder}
    figures = []
    if task.folds:
        per_fold = {}
        for f, held in task.folds.items():
            train = torch.cat([idx for g, idx in task.folds.items() if g != f])
            per_fold[str(f)] = train_and_test(cfg, task, enc_cfg, train, None, {"test": held}, run, f" / fold{f}")
            figures.append((f"Training curves, fold {f}", plot_training_curves(
                per_fold[str(f)]["history"], title=f"{task.name} fold {f}")))
        keys = per_fold[next(iter(per_fold))]["test"]["test"].keys()
        numbers["folds"] = per_fold
        numbers["test"] = {"test": {k: _mean_std([r["test"]["test"][k] for r in per_fold.values()])
                                    for k in keys if k != "loss"}}
        summary = {f"fold {f}": {metric: r["test"]["test"][metric]} for f, r in per_fold.items()}
        summary["mean"] = {metric: numbers["test"]["test"][metric]["mean"]}
    else:
        tests = {r: idx for r, idx in task.splits.items() if r.startswith("test")}
        res = train_and_test(cfg, task, enc_cfg, task.splits["train"], task.splits.get("valid"), tests, run)
        numbers.update(res)
        figures.append(("Training curves", plot_training_curves(res["history"], title=task.name)))
        summary = {role: {k: v for k, v in m.items() if not k.startswith("classes_skipped")}
                   for role, m in res["test"].items()}
    numbers["seconds"] = time.time() - t0
    numbers["bad_clips"] = task.bad_clips
    write_results(run, "finetune", numbers, resolved, cfg.seed)
    sections = [("Summary", [f"Fine-tuned {cfg.model.encoder} on {task.name} ({task.task_type}, "
                             f"{task.fbank.target_frames} frames) for {cfg.optim.epochs} epochs; "
                             f"{numbers['seconds']:.0f} s. Main metric: {metric}.", summary])]
    sections += [(title, [fig]) for title, fig in figures]
    write_report(run, f"Fine-tuning: {task.name}", sections, name="finetune")
    print(f"[finetune] {task.name}: " + json.dumps(summary), flush=True)
    return numbers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a recipe, e.g. configs/finetune/embedded_keywords.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.epochs=5")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        raw = load_config(args.config, args.overrides)
        finetune(FinetuneConfig.from_dict(raw), raw)
    except (ConfigError, ManifestError, AudioError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["FinetuneConfig", "TaskConfig", "ModelConfig", "OptimConfig", "AugmentConfig", "EvalConfig", "Task",
           "FinetuneModel", "build_config", "load_task", "cache_spectrograms", "build_model", "build_optimizer",
           "lr_at", "augment_batch", "score", "finetune", "main"]

if __name__ == "__main__":
    sys.exit(main())
