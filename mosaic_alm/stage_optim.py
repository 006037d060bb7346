"""A stage's optimizer: parameter groups (the projector may have its own learning rate), AdamW + the cosine
schedule, or a DeepSpeed engine whose JSON config takes lr, batch, accumulation and clipping from the stage config."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mosaic_alm.stage_config import StageTrainConfig
from mosaic_core.runtime import (
    deepspeed_cpu_workaround,
    single_process_dist_env,
    use_bf16,
)
from mosaic_core.schedule import cosine_schedule


def deepspeed_config(path: str, tcfg: StageTrainConfig, world: int, device: torch.device) -> dict:
    """The DeepSpeed JSON at ``path`` with lr, batch, accumulation, clipping and bf16 from the stage config."""
    cfg = json.loads(Path(path).read_text())
    cfg["train_micro_batch_size_per_gpu"] = tcfg.batch_size
    cfg["gradient_accumulation_steps"] = tcfg.grad_accum
    cfg["train_batch_size"] = tcfg.batch_size * tcfg.grad_accum * world
    cfg["gradient_clipping"] = tcfg.max_grad_norm
    cfg.setdefault("optimizer", {"type": "AdamW", "params": {}})
    cfg["optimizer"]["params"].update(lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    cfg.pop("scheduler", None)  # our LambdaLR drives the schedule
    cfg["bf16"] = {"enabled": use_bf16(tcfg.precision, device)}
    if device.type == "cpu":  # no JIT-compiled fused Adam on CPU (docs/ARCHITECTURE.md): torch AdamW inside DeepSpeed
        cfg["optimizer"]["params"]["torch_adam"] = True
    return cfg


def alm_param_groups(model, tcfg: StageTrainConfig) -> list[dict]:
    """Optimizer parameter groups: the trainable projector at ``projector_lr`` (when set), the rest at ``lr``."""
    proj = {id(p) for p in model.projector.parameters()} if model.projector is not None else set()
    trainable = [(p, id(p) in proj) for p in model.parameters() if p.requires_grad]
    if tcfg.projector_lr is None or not any(is_proj for _, is_proj in trainable):
        return [{"params": [p for p, _ in trainable], "lr": tcfg.lr}]
    groups = [{"params": [p for p, is_proj in trainable if is_proj], "lr": tcfg.projector_lr},
              {"params": [p for p, is_proj in trainable if not is_proj], "lr": tcfg.lr}]
    return [g for g in groups if g["params"]]


def stage_optimizer(model, tcfg: StageTrainConfig, total: int, world: int, device: torch.device):
    """``(engine, optimizer, scheduler)`` for ``total`` optimizer steps: AdamW over :func:`alm_param_groups` with the
    cosine schedule (engine None), or with ``train.deepspeed`` a DeepSpeed engine built on DeepSpeed's basic
    optimizer, which steps the same schedule at accumulation boundaries."""
    groups = alm_param_groups(model, tcfg)
    warmup = int(tcfg.warmup_ratio * total)
    if not tcfg.deepspeed:
        opt = torch.optim.AdamW(groups, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        return None, opt, cosine_schedule(opt, total, warmup)
    import deepspeed

    if world == 1 and not torch.distributed.is_initialized():
        deepspeed_cpu_workaround()
        single_process_dist_env()
    projector = getattr(model, "projector", None)
    for p in projector.external_parameters() if projector is not None else []:
        deepspeed.zero.register_external_parameter(projector, p)  # ZeRO-3 gathers them for the projector's forward
    engine, opt, _, sched = deepspeed.initialize(
        model=model, model_parameters=groups, config=deepspeed_config(tcfg.deepspeed, tcfg, world, device),
        lr_scheduler=lambda o: cosine_schedule(o, total, warmup))
    return engine, opt, sched
