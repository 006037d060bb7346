"""Recipe: full fine-tuning of the AudioMosaic encoder (AudioMAE-style).

    mosaic-alm finetune --config configs/finetune/embedded_keywords.yaml optim.epochs=5 model.encoder=runs/x/encoder

What it does, top to bottom:

1. **Config** — a YAML recipe (``configs/finetune/*.yaml``) plus dotted ``key=value`` overrides, turned into the
   checked :class:`FinetuneConfig` dataclasses; an unknown key or a bad value anywhere (recipe, override or data
   recipe) is an error.
2. **Task** — a data recipe (``configs/data/*.yaml``, optionally patched by ``task.data``) names the clips: a JSON-lines
   manifest (``format: manifest``, the default), AudioSet JSON, ESC-50 or Speech Commands (see
   :mod:`encoder.data.tasks`). Each task has its own ``target_frames``. Task types: ``single_label`` (accuracy),
   ``multi_label`` (mAP, AUC, d-prime), ``spoof`` (binary bona fide / spoof: EER, accuracy). Normalised spectrograms
   are computed once per clip and kept in memory when the set is small (``task.cache``), else computed per batch.
3. **Model** — :class:`encoder.vit.AudioMosaicViT` from a folder written by pretraining (``run/encoder``) or random
   init, plus a linear head on the pooled output (fc_norm of the mean over patch tokens, CLS excluded).
4. **Training** — train-time augmentations on spectrogram batches (roll-and-magnitude, mixup, SpecAugment; each can
   be switched off), AdamW with layer-wise lr decay (:func:`eval.augment.layerwise_lr_groups`) and a per-step
   linear-warmup + cosine schedule, an optional class-balanced ``WeightedRandomSampler`` (AudioSet-2M). Loss:
   soft-target cross-entropy (single-label, spoof) or BCE (multi-label).
5. **Evaluation** — every ``eval.every`` epochs on ``valid`` (the model with the best valid metric is kept when
   ``eval.select: best_valid``), finally on every ``test*`` split. ``task.folds`` runs cross-validation (ESC-50: five
   folds, each held out once, no valid split, last epoch scored) and averages.
6. **Outputs** (``run_dir``) — ``config.yaml`` (resolved), ``finetune.json`` (via :func:`eval.results.write_results`:
   numbers, config, seed, commit, versions), ``finetune.md/.html`` with training curves, TensorBoard events under
   ``tb/`` and, with ``save_model: true``, ``model.safetensors`` (encoder + head, config in the metadata).

One ``seed`` seeds Python, NumPy and torch, the shuffling/sampling generator and the augmentation generator.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from encoder import checkpoint as ckpt
from encoder.data.shards import ShardDataset, shard_epoch, shard_steps_per_epoch
from encoder.data.tasks import ClipSet, LabeledShardClips, Task, TaskConfig, cache_spectrograms, load_task
from encoder.vit import EncoderConfig
from eval.augment import class_balanced_weights
from eval.classifier_training import (
    MAIN_METRIC,
    FinetuneEvalConfig,
    FinetuneModelConfig,
    FinetuneOptimConfig,
    SpecAugmentConfig,
    augment_batch,
    build_finetune_model,
    build_optimizer,
    encoder_config,
    is_better,
    loss_fn,
    predict_batches,
    save_finetuned,
    score,
    trainable_summary,
)
from eval.results import plot_training_curves, write_report, write_results
from mosaic_core.config import ConfigError, NonNegInt, load_recipe, save_yaml, to_plain
from mosaic_core.runtime import autocast, precision_note, seed_everything, set_threads, use_bf16
from mosaic_core.schedule import lr_factor


@dataclass
class FinetuneConfig:
    seed: int = 0
    run_dir: str = "runs/finetune"
    threads: NonNegInt = 0  # torch intra-op threads; 0 = torch's default
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast where the CPU/GPU computes it natively
    tensorboard: bool = True
    save_model: bool = False
    ckpt_every: NonNegInt = 0  # > 0: checkpoint every N optimizer steps (run_dir/checkpoints); a rerun resumes there
    keep_last: NonNegInt = 2  # checkpoints kept per run (0 = all)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    eval: FinetuneEvalConfig = field(default_factory=FinetuneEvalConfig)


def _loader(task: Task, idx: torch.Tensor, batch_size: int, workers: int, sampler=None, generator=None):
    return torch.utils.data.DataLoader(ClipSet(task, idx), batch_size=batch_size, sampler=sampler,
                                       num_workers=workers, shuffle=False, generator=generator)


def _save(ckdir: Path, cfg: FinetuneConfig, model, opt, rng: dict, best_state, state: dict,
          shards: ShardDataset | None) -> None:
    opt_tensors, opt_rest = ckpt.flatten_optimizer_state(opt.state_dict())
    tensors = {"model": model.state_dict(), "optimizer": opt_tensors, "rng": rng}
    if best_state is not None:
        tensors["best"] = best_state
    state = {**state, "optimizer": opt_rest, "config": to_plain(cfg),
             "shards": shards.state_dict() if shards is not None else None}
    ckpt.save_checkpoint(ckdir, state["step"], tensors, state, keep_last=cfg.keep_last)


def _resume(ckdir: Path, cfg: FinetuneConfig, model, opt, shards: ShardDataset | None):
    """(tensors, state) of the newest verified checkpoint in ``ckdir`` after loading model, optimizer and reader
    state, or None. A checkpoint of another config is refused (one line)."""
    latest = ckpt.latest_checkpoint(ckdir)
    if latest is None:
        return None
    tensors, state = ckpt.load_checkpoint(latest)
    if state.get("config") != json.loads(json.dumps(to_plain(cfg))):
        raise ckpt.CheckpointError(f"{latest}: written by a run with another config; use another run_dir "
                                   f"(or delete {ckdir})")
    model.load_state_dict(tensors["model"])
    opt.load_state_dict(ckpt.unflatten_optimizer_state(tensors["optimizer"], state["optimizer"]))
    if shards is not None:
        shards.load_state_dict(state["shards"])
    print(f"[finetune] resumed from {latest} at step {state['step']}", flush=True)
    return tensors, state


@dataclass
class _Loop:
    """The training loop's state; a checkpoint saves it and a resumed run continues from it."""
    history: dict
    best: float | None = None
    best_state: dict | None = None
    best_epoch: int = 0
    step: int = 0
    start_epoch: int = 1
    done: int = 0  # batches of the current epoch already trained
    losses: list = field(default_factory=list)
    lr: float = 0.0


@dataclass
class _Setup:
    """What the loop reads, built once: generators, the training clips' sampler, the schedule, where it writes."""
    gen: torch.Generator  # augmentations
    sgen: torch.Generator  # shuffling / sampling
    shards: ShardDataset | None
    sampler: Any
    n_train: int
    steps_per_epoch: int
    total: int
    warmup: int
    writer: Any
    ckdir: Path
    amp: Any


def _setup_sampler(cfg: FinetuneConfig, task: Task, train_idx, sgen: torch.Generator):
    """(shards, sampler, clips, clips per epoch) of the training split."""
    oc = cfg.optim
    shards = train_idx if isinstance(train_idx, ShardDataset) else None
    if shards is not None:  # one pass over the shards per epoch (clip counts from their index)
        shard_steps_per_epoch(shards, oc.batch_size, drop_last=False)  # refuses shards without an index
        n_train = per_epoch = shards.clips_per_rank()[0]
        return shards, None, n_train, per_epoch
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
    return None, sampler, n_train, per_epoch


def _build(cfg: FinetuneConfig, task: Task, enc_cfg: EncoderConfig, tag: str):
    """A fresh seeded model, its optimizer and the autocast context."""
    seed_everything(cfg.seed)
    model = build_finetune_model(cfg.model, enc_cfg, task.num_outputs)
    counts = trainable_summary(model)
    print(f"[finetune] {task.name}{tag}: trainable parameters " + ", ".join(
        f"{k} {v['trainable']:,}/{v['total']:,}" for k, v in counts.items()), flush=True)
    opt = build_optimizer(model, cfg.optim)
    cpu = torch.device("cpu")
    bf16 = use_bf16(cfg.precision, cpu)
    print(f"[finetune] precision: {precision_note(bf16, cpu)}", flush=True)
    return model, opt, counts, lambda: autocast(bf16, cpu)


def _setup_loop(cfg: FinetuneConfig, task: Task, train_idx, run: Path, tag: str, amp) -> _Setup:
    oc = cfg.optim
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # augmentations
    sgen = torch.Generator().manual_seed(cfg.seed + 2)  # shuffling / sampling
    shards, sampler, n_train, per_epoch = _setup_sampler(cfg, task, train_idx, sgen)
    steps_per_epoch = math.ceil(per_epoch / oc.batch_size)
    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb" / (tag.strip(" /") or "run")))
    return _Setup(gen, sgen, shards, sampler, n_train, steps_per_epoch, oc.epochs * steps_per_epoch,
                  int(round(oc.warmup_epochs * steps_per_epoch)), writer,
                  run / "checkpoints" / (tag.strip(" /") or "run"), amp)


def _start(cfg: FinetuneConfig, su: _Setup, model, opt, history: dict, task, train_idx, valid_idx) -> _Loop:
    """The loop's state: from the newest checkpoint (bit-identical continuation: generators, global RNG and the
    epoch's position), else fresh, the head from the frozen probe where ``model.head_init=probe``."""
    loop = _Loop(history=history, best_epoch=cfg.optim.epochs, lr=cfg.optim.lr)
    resumed = _resume(su.ckdir, cfg, model, opt, su.shards) if cfg.ckpt_every > 0 else None
    if resumed is not None:
        tensors, st = resumed
        su.gen.set_state(tensors["rng"]["gen"])
        su.sgen.set_state(tensors["rng"]["sgen_epoch"])  # the epoch's order is drawn again from its start state
        torch.set_rng_state(tensors["rng"]["torch"])
        loop.best_state = tensors.get("best")
        loop.best, loop.best_epoch, loop.history, loop.step = st["best"], st["best_epoch"], st["history"], st["step"]
        loop.start_epoch, loop.done, loop.losses, loop.lr = st["epoch"], st["batches"], st["losses"], st["lr"]
    elif cfg.model.head_init == "probe":  # a resumed run has the head (and its statistics) from its checkpoint
        init_head_from_probe(model, task, train_idx, valid_idx, cfg, su.amp)
    return loop


def _epoch_batches(cfg: FinetuneConfig, task: Task, train_idx, su: _Setup, loop: _Loop, epoch: int):
    oc = cfg.optim
    if su.shards is None:  # the epoch's order drawn up front, so a resume can skip the batches already trained
        order = list(su.sampler)[loop.done * oc.batch_size:]
        return _loader(task, train_idx, oc.batch_size, oc.num_workers, order,
                       torch.Generator().manual_seed(cfg.seed + 3))
    su.shards.set_epoch(epoch)
    return ((b["input"], b["target"]) for b in shard_epoch(su.shards, oc.batch_size, drop_last=False,
                                                          num_workers=oc.num_workers))


def _train_epoch(cfg: FinetuneConfig, task: Task, train_idx, model, opt, su: _Setup, loop: _Loop, epoch: int,
                 tag: str) -> None:
    """One epoch of optimizer steps (checkpointing every ``ckpt_every`` steps), then its mean loss and lr."""
    from tqdm import tqdm

    oc = cfg.optim
    model.train()
    if epoch != loop.start_epoch:
        loop.done, loop.losses = 0, []
    sgen_epoch = su.sgen.get_state()
    batches = _epoch_batches(cfg, task, train_idx, su, loop, epoch)
    for x, y in tqdm(batches, desc=f"{task.name}{tag} epoch {epoch}/{oc.epochs}", leave=False,
                     total=su.steps_per_epoch - loop.done, dynamic_ncols=True, mininterval=5.0, disable=None):
        loop.lr = lr = oc.lr * lr_factor(loop.step, su.total, su.warmup, oc.min_lr / oc.lr)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        x, soft = augment_batch(x, y, cfg.augment, task, su.gen)
        with su.amp():
            logits = model(x)
        loss = loss_fn(logits.float(), soft, task.task_type)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if oc.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), oc.grad_clip)
        opt.step()
        loop.losses.append(loss.item())
        loop.step, loop.done = loop.step + 1, loop.done + 1
        if cfg.ckpt_every > 0 and loop.step % cfg.ckpt_every == 0:
            _save(su.ckdir, cfg, model, opt, {"gen": su.gen.get_state(), "sgen_epoch": sgen_epoch,
                                              "torch": torch.get_rng_state()}, loop.best_state,
                  {"step": loop.step, "epoch": epoch, "batches": loop.done, "losses": loop.losses, "lr": loop.lr,
                   "history": loop.history, "best": loop.best, "best_epoch": loop.best_epoch}, su.shards)
    loop.history["train_loss"].append(float(np.mean(loop.losses)))
    loop.history["lr"].append(loop.lr)
    if su.writer:
        su.writer.add_scalar("train/loss", loop.history["train_loss"][-1], epoch)
        su.writer.add_scalar("train/lr", loop.lr, epoch)


def _eval_epoch(cfg: FinetuneConfig, task: Task, model, su: _Setup, loop: _Loop, epoch: int, tag: str, curve_on,
                curve_name: str, select: bool) -> None:
    """The epoch's curve point (valid, else the first test split); keeps the best model when selecting on valid."""
    metric = MAIN_METRIC[task.task_type]
    with su.amp():
        m = score(*predict_batches(model, _loader(task, curve_on, cfg.eval.batch_size, cfg.optim.num_workers)), task)
    loop.history[f"{curve_name}_loss"].append(m["loss"])
    loop.history[f"{curve_name}_{metric}"].append(m[metric])
    if su.writer:
        for k, v in m.items():
            su.writer.add_scalar(f"{curve_name}/{k}", v, epoch)
    print(f"[finetune] {task.name}{tag} epoch {epoch}: train loss {loop.history['train_loss'][-1]:.4f}, "
          f"{curve_name} {metric} {m[metric]:.4f}", flush=True)
    if select and cfg.eval.select == "best_valid" and is_better(m[metric], loop.best, metric):
        loop.best, loop.best_epoch = m[metric], epoch
        loop.best_state = copy.deepcopy(model.state_dict())


def train_and_test(cfg: FinetuneConfig, task: Task, enc_cfg: EncoderConfig, train_idx: torch.Tensor | ShardDataset,
                   valid_idx: torch.Tensor | None, tests: dict[str, torch.Tensor], run: Path,
                   tag: str = "") -> dict[str, Any]:
    """Fine-tune a fresh model on ``train_idx`` (row indices, or a :class:`ShardDataset` of training clips);
    select on ``valid_idx``; score every test split. With ``ckpt_every`` it resumes from its newest checkpoint."""
    oc = cfg.optim
    model, opt, counts, amp = _build(cfg, task, enc_cfg, tag)
    su = _setup_loop(cfg, task, train_idx, run, tag, amp)
    metric = MAIN_METRIC[task.task_type]
    select_on = valid_idx if valid_idx is not None and len(valid_idx) else None
    curve_on, curve_name = (select_on, "valid") if select_on is not None else (next(iter(tests.values())),
                                                                               next(iter(tests)))
    history: dict[str, list] = {"train_loss": [], f"{curve_name}_loss": [], f"{curve_name}_{metric}": [], "lr": []}
    loop = _start(cfg, su, model, opt, history, task, train_idx, valid_idx)
    t0 = time.time()
    for epoch in range(loop.start_epoch, oc.epochs + 1):
        _train_epoch(cfg, task, train_idx, model, opt, su, loop, epoch, tag)
        if epoch % cfg.eval.every == 0 or epoch == oc.epochs:
            _eval_epoch(cfg, task, model, su, loop, epoch, tag, curve_on, curve_name, select_on is not None)
    if su.writer:
        su.writer.close()
    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    with amp():
        results = {role: score(*predict_batches(model, _loader(task, idx, cfg.eval.batch_size, oc.num_workers)),
                               task) for role, idx in tests.items()}
    out = {"test": results, "selected_epoch": loop.best_epoch if loop.best_state is not None else oc.epochs,
           "history": loop.history, "train_seconds": time.time() - t0, "n_train": su.n_train,
           "n_valid": 0 if select_on is None else len(select_on), "n_test": {k: len(v) for k, v in tests.items()},
           "trainable_parameters": counts}
    if select_on is not None and loop.best is not None:
        out[f"valid_{metric}"] = loop.best
    if cfg.save_model:
        save_finetuned(model, task, run / (tag.strip(" /") or ".") / "model.safetensors")
    return out


@torch.no_grad()
def init_head_from_probe(model, task: Task, train_idx, valid_idx, cfg: FinetuneConfig, amp) -> None:
    """LP-FT: the fair linear read-out fitted on the frozen encoder's pooled features of the training (and valid)
    clips becomes the head and its standardiser, so fine-tuning starts at the frozen probe's accuracy."""
    from eval.probes import fit_logreg

    if task.task_type == "multi_label":
        raise ConfigError("model.head_init=probe needs a single-label or spoof task (multi-label: head_init=random)")

    def feats(idx):
        if isinstance(idx, ShardDataset):  # one pass over a copy of the reader: the training one stays at its start
            reader = copy.deepcopy(idx)
            reader.set_epoch(0)
            batches = ((b["input"], b["target"]) for b in shard_epoch(reader, cfg.eval.batch_size, drop_last=False,
                                                                      num_workers=cfg.optim.num_workers))
        else:
            batches = _loader(task, idx, cfg.eval.batch_size, cfg.optim.num_workers)
        with amp():
            x, y = predict_batches(model, batches, model.features)
        return x.numpy(), y.numpy()

    t0 = time.time()
    xtr, ytr = feats(train_idx)
    xva, yva = feats(valid_idx) if valid_idx is not None and len(valid_idx) else (None, None)
    fixed_c = {"Cs": (cfg.model.head_init_C,)} if cfg.model.head_init_C > 0 else {}  # else C chosen on valid
    readout = fit_logreg(xtr, ytr, xva, yva, seed=cfg.seed, **fixed_c)
    model.init_head_from_readout(readout)
    print(f"[finetune] head initialised from the fair linear read-out (C={readout.C}, valid "
          f"{readout.valid_metric.get(readout.C)}) in {time.time() - t0:.0f} s", flush=True)


def _mean_std(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


# =========================================================================================================== run
def finetune(cfg: FinetuneConfig, raw: dict | None = None) -> dict[str, Any]:
    """Run the recipe; returns the numbers written to ``{run_dir}/finetune.json``."""
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    resolved = raw if raw is not None else to_plain(cfg)
    save_yaml(resolved, run / "config.yaml")
    enc_cfg = encoder_config(cfg.model)
    task = load_task(cfg.task, enc_cfg, cfg.seed)
    shards = None
    if cfg.task.shards:  # the training clips stream from shards; valid and test still come from the task's files
        if task.folds or cfg.optim.balanced_sampler or cfg.optim.samples_per_epoch:
            raise ConfigError("task.shards: cross-validation folds, optim.balanced_sampler and "
                              "optim.samples_per_epoch read the train split's files; unset them to train from shards")
        shards = ShardDataset(cfg.task.shards, seed=cfg.seed, shuffle_buffer=cfg.task.shuffle_buffer,
                              transform=LabeledShardClips(task), max_seconds=task.fbank.max_seconds,
                              quarantine=run / "quarantine.jsonl")
        task.splits = {role: idx for role, idx in task.splits.items() if role != "train"}  # not decoded
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
        train = shards if shards is not None else task.splits["train"]
        res = train_and_test(cfg, task, enc_cfg, train, task.splits.get("valid"), tests, run)
        numbers.update(res)
        figures.append(("Training curves", plot_training_curves(res["history"], title=task.name)))
        summary = {role: {k: v for k, v in m.items() if not k.startswith("classes_skipped")}
                   for role, m in res["test"].items()}
    numbers["seconds"] = time.time() - t0
    numbers["bad_clips"] = task.bad_clips
    if shards is not None:
        numbers["train_shards"] = {"source": cfg.task.shards, "bad_records": shards.bad_records}
    write_results(run, "finetune", numbers, resolved, cfg.seed)
    sections = [("Summary", [f"Fine-tuned {cfg.model.encoder} on {task.name} ({task.task_type}, "
                             f"{task.fbank.target_frames} frames) for {cfg.optim.epochs} epochs; "
                             f"{numbers['seconds']:.0f} s. Main metric: {metric}.", summary])]
    sections += [(title, [fig]) for title, fig in figures]
    write_report(run, f"Fine-tuning: {task.name}", sections, name="finetune")
    print(f"[finetune] {task.name}: " + json.dumps(summary), flush=True)
    return numbers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mosaic-alm finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a recipe, e.g. configs/finetune/embedded_keywords.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.epochs=5")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    cfg, raw = load_recipe(FinetuneConfig, args.config, args.overrides)
    finetune(cfg, raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
