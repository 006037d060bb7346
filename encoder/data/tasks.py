"""One task loader for fine-tuning, encoder evaluation and ALM evaluation: a data recipe (``configs/data/*.yaml``:
a JSON-lines manifest, AudioSet JSON, ESC-50 or Speech Commands, see :mod:`encoder.data.public`) becomes a
:class:`Task` (rows, class list, targets, role -> row indices or cross-validation folds, the front-end constants),
plus the spectrogram cache and dataset that read it. Task types: ``single_label``, ``multi_label``, ``spoof``.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mosaic_core.config import ConfigError, NonNegFloat, NonNegInt, read_yaml

from ..features import AudioError, FbankConfig, load_audio, waveform_to_input
from ..vit import EncoderConfig
from .manifest import load_classes, read_manifest

log = logging.getLogger(__name__)

TASK_TYPES = ("single_label", "multi_label", "spoof")


@dataclass
class TaskConfig:
    """Which clips make a task: a data recipe (``configs/data/*.yaml``) and how to read it."""

    config: str = ""  # a data recipe (configs/data/*.yaml); may be empty when ``data`` holds everything
    data: dict = field(default_factory=dict)  # keys merged over the data recipe (e.g. paths, version)
    data_root: str = ""  # root of a manifest-format task ("" = the data recipe's data_root)
    task_type: Literal["", "single_label", "multi_label", "spoof"] = ""  # "" = from the recipe (else single_label)
    target_frames: NonNegInt = 0  # 0 = the data recipe's target_frames
    folds: list[int] = field(default_factory=list)  # cross-validation folds ([] = use the recipe's splits)
    bonafide_label: str = "bonafide"  # spoof tasks: the positive (bona fide) class name
    cache: Literal["auto", "always", "never"] = "auto"  # keep spectrograms in memory
    cache_max_gb: NonNegFloat = 4.0  # "auto" caches when the float32 spectrograms fit in this
    max_clips_per_split: NonNegInt = 0  # > 0 subsamples each split (quick runs)
    # fine-tuning: the TRAINING clips from WebDataset shards (a folder written by write_shards, a glob or a brace
    # pattern; labels from each clip's JSON record) instead of the recipe's train split; null = the train split
    shards: str | None = None
    shuffle_buffer: NonNegInt = 512  # shards: clips in each loader worker's shuffle buffer


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


def data_recipe(tc: TaskConfig) -> dict:
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


def load_task(tc: TaskConfig, enc_cfg: EncoderConfig | None = None, seed: int = 0) -> Task:
    """Read the task's clips and targets (spectrograms are added by :func:`cache_spectrograms`). ``enc_cfg`` gives
    the front end's constants (default: :class:`EncoderConfig`'s, which every preset shares)."""
    enc_cfg = enc_cfg or EncoderConfig(size="tiny")
    d = data_recipe(tc)
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
                raise ConfigError(f"task {d['name']}: no clips in fold {f} "
                                  f"(rows need a 'fold' field or split 'fold{f}')")
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


def spectrogram(row: dict, fb: FbankConfig) -> torch.Tensor:
    return waveform_to_input(load_audio(row["path"], fb.sample_rate, fb.max_seconds), fb, source=row["path"])


def cache_spectrograms(task: Task, tc: TaskConfig) -> None:
    """Compute each used clip's spectrogram once and keep it (policy ``tc.cache``); drop clips that fail to decode."""
    used = torch.unique(torch.cat(list(task.splits.values()) + list(task.folds.values())))
    gb = len(used) * task.fbank.target_frames * task.fbank.num_mel_bins * 4 / 1e9
    if tc.cache == "never" or (tc.cache == "auto" and gb > tc.cache_max_gb):
        log.info(f"[task] {task.name}: spectrograms computed per batch ({gb:.1f} GB would not be cached)")
        return
    from tqdm import tqdm

    specs = torch.zeros(len(task.rows), task.fbank.target_frames, task.fbank.num_mel_bins)
    ok = torch.zeros(len(task.rows), dtype=torch.bool)
    for i in tqdm(used.tolist(), desc=f"spectrograms {task.name}", dynamic_ncols=True, mininterval=2.0):
        try:
            specs[i] = spectrogram(task.rows[i], task.fbank)
            ok[i] = True
        except AudioError as exc:
            task.bad_clips.append({"id": task.rows[i]["id"], "error": str(exc)})
    task.specs = specs
    if task.bad_clips:
        log.warning(f"[task] {task.name}: skipping {len(task.bad_clips)} clip(s) that cannot be decoded, e.g. "
                    f"{task.bad_clips[0]['error']}")
        task.splits = {k: v[ok[v]] for k, v in task.splits.items()}
        task.folds = {k: v[ok[v]] for k, v in task.folds.items()}


class LabeledShardClips:
    """A :class:`~encoder.data.shards.ShardDataset` transform for fine-tuning: a decoded clip ->
    ``{"id", "input" [T, F], "target"}``, the input as :func:`spectrogram` computes it from the file and the target as
    :func:`load_task` builds it from the record's ``label``/``labels``/``label_indices``. A label outside the task's
    classes makes the record bad (skipped, counted, quarantined). A class, so spawned workers can unpickle it."""

    def __init__(self, task: Task):
        from .shards import FbankTransform

        self.fbank = FbankTransform(task.fbank)
        self.index = {c: i for i, c in enumerate(task.classes)}
        self.multi = task.task_type == "multi_label"

    def __call__(self, sample: dict) -> dict:
        out, rec = self.fbank(sample), sample["record"]
        if "label_indices" in rec:
            idx = [int(i) for i in rec["label_indices"]]
        else:
            labs = rec.get("labels", rec.get("label"))
            labs = labs if isinstance(labs, list) else [labs]
            missing = [lab for lab in labs if lab not in self.index]
            if missing or (not self.multi and len(labs) != 1):
                raise AudioError(str(sample["id"]), f"label {missing[0] if missing else labs!r} does not fit the "
                                                    f"task's classes")
            idx = [self.index[lab] for lab in labs]
        if self.multi:
            target = torch.zeros(len(self.index))
            target[idx] = 1.0
        else:
            target = torch.tensor(idx[0], dtype=torch.long)
        return {"id": out["id"], "input": out["input"], "target": target}


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
                x = spectrogram(t.rows[i], t.fbank)
            except AudioError as exc:  # one broken file must not end a two-day AudioSet run
                log.warning(f"[task] warning: {exc}; using silence")
                x = torch.zeros(t.fbank.target_frames, t.fbank.num_mel_bins)
        return x, t.targets[i]
