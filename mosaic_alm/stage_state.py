"""A stage's resumable state: checkpoints of the trainable weights, optimizer, scheduler, data position, losses and
RNG states (``{run}/checkpoints``, safetensors + JSON via :mod:`encoder.checkpoint`; DeepSpeed's own optimizer
partitions in ``{run}/ds_checkpoints``), and resuming from the newest one bit-exactly when the config still matches
(:func:`mosaic_alm.stage_config.trajectory_config`)."""
from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from encoder import checkpoint as ckpt
from mosaic_alm.artifact import module_state
from mosaic_alm.stage_config import trajectory_config
from mosaic_core.runtime import rank_world

log = logging.getLogger(__name__)


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda{i}"] = st
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    return tensors, {"python": random.getstate(), "numpy": [kind, int(pos), int(has_gauss), float(cached)]}


def _set_rng_state(tensors: dict[str, torch.Tensor], state: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if rank_world()[1] > 1:
        torch.distributed.barrier()


def save_stage_checkpoint(out: Path, cfg: dict, model, opt, sched, keep_last: int, progress: dict,
                          engine=None) -> Path | None:
    """``{out}/checkpoints/step_N/``: trainable parameters, projector buffers, optimizer tensors and RNG states as
    safetensors; step, data position, loss history, scheduler, optimizer scalars, RNG scalars and the config as
    JSON (encoder.checkpoint: atomic, checksummed). Under DeepSpeed every rank calls it: the optimizer is
    DeepSpeed's own checkpoint in ``{out}/ds_checkpoints/step_N/`` (trainable weights only), whose manifest goes into
    the state; ZeRO-3 partitions are gathered; each rank's RNG states are kept (``rank{r}.`` keys). Rank 0 writes."""
    name = f"{ckpt.PREFIX}{progress['step']:08d}"
    ds = ckpt.save_deepspeed_state(engine, out, name, exclude_frozen=True) if engine is not None else None
    want = {n for n, p in model.named_parameters() if p.requires_grad}
    trainable = module_state(model, only=lambda n: n in want)  # gathered under ZeRO-3; buffers of these names: none
    rank, world = rank_world()
    rngs = [None] * world
    if world > 1:
        torch.distributed.all_gather_object(rngs, _rng_state())
    else:
        rngs[0] = _rng_state()
    if rank != 0:
        return None
    rng_t = dict(rngs[0][0])
    rng_t.update({f"rank{r}.{k}": v for r in range(1, world) for k, v in rngs[r][0].items()})
    opt_t, opt_rest = ckpt.flatten_optimizer_state(opt.state_dict()) if engine is None else ({}, None)
    sched_state = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
    tensors = {"trainable": trainable,
               "buffers": {n: b for n, b in model.named_buffers() if n.startswith("projector.")},
               "optimizer": opt_t, "rng": rng_t}
    state = dict(progress, optimizer=opt_rest, scheduler=sched_state, rng=rngs[0][1],
                 rng_ranks=[r[1] for r in rngs[1:]], world=world, deepspeed=ds, config=cfg)
    path = ckpt.save_checkpoint(out / "checkpoints", progress["step"], {k: v for k, v in tensors.items() if v},
                                state, keep_last=keep_last)
    if engine is not None:
        ckpt.prune_deepspeed_states(out)
    return path


def resume_stage(out: Path, cfg: dict, model, opt, sched, engine=None) -> dict | None:
    """Load the newest verified checkpoint in ``{out}/checkpoints`` into model, optimizer, scheduler and the RNGs;
    returns its progress (step, data position, losses) or None. Checkpoints of another config (beyond
    RESUME_FREE_KEYS) are moved aside to ``checkpoints.superseded-<time>`` and the stage starts fresh. Under
    DeepSpeed (every rank calls it) the engine loads its own checkpoint only after it matches the manifest and loads
    without code (encoder.checkpoint.load_deepspeed_state); the weights it restores must equal the checkpoint's."""
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    if latest is None:
        return None
    tensors, state = ckpt.load_checkpoint(latest)
    rank, world = rank_world()
    barrier()  # every rank has read the folder before rank 0 may move it
    if trajectory_config(state.get("config", {})) != trajectory_config(cfg):
        aside = out / f"checkpoints.superseded-{time.strftime('%Y%m%d-%H%M%S')}"
        if rank == 0:
            os.replace(out / "checkpoints", aside)
            if (out / ckpt.DS_DIR).is_dir():
                os.replace(out / ckpt.DS_DIR, aside / ckpt.DS_DIR)
            log.warning("checkpoints in %s are from another config; moved to %s, starting the stage fresh",
                        out / "checkpoints", aside)
        return None
    if state.get("world", 1) != world:
        raise ckpt.CheckpointError(f"checkpoint {latest} was written by {state.get('world', 1)} ranks; resume it "
                                   f"with as many (this run has {world})")
    named = dict(model.named_parameters())
    want = {n for n, p in named.items() if p.requires_grad}
    got = tensors.get("trainable", {})
    if set(got) != want:
        raise ckpt.CheckpointError(f"checkpoint {latest}: its trainable parameters do not match the model's "
                                   f"(missing {sorted(want - set(got))[:3]}, extra {sorted(set(got) - want)[:3]})")
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for n, t in tensors.get("buffers", {}).items():
            buffers[n].copy_(t)
    if engine is None:
        with torch.no_grad():
            for n, t in got.items():
                named[n].copy_(t)
        opt.load_state_dict(ckpt.unflatten_optimizer_state(tensors.get("optimizer", {}), state["optimizer"]))
    else:  # optimizer partitions and fp32 master weights; frozen weights are the model's own
        ckpt.load_deepspeed_state(engine, out, state.get("deepspeed"), load_module_strict=False)
        have = module_state(model, only=lambda n: n in want)
        bad = [n for n in sorted(want) if not torch.equal(have[n], got[n])]
        if bad:
            raise ckpt.CheckpointError(f"checkpoint {latest}: DeepSpeed's state in {out / ckpt.DS_DIR} does not "
                                       f"match its weights ({bad[:3]}); refusing to resume")
    sched.load_state_dict(dict(state["scheduler"], lr_lambdas=[None] * len(sched.lr_lambdas)))
    for group, lr in zip(sched.optimizer.param_groups, sched.get_last_lr()):
        group["lr"] = lr  # the rate of the next step as the scheduler left it, whatever the optimizer load restored
    if rank == 0:
        _set_rng_state(tensors["rng"], state["rng"])
    else:
        mine = {k.split(".", 1)[1]: v for k, v in tensors["rng"].items() if k.startswith(f"rank{rank}.")}
        _set_rng_state(mine, state["rng_ranks"][rank - 1])
    return state
