"""The learning-rate schedule every trainer uses: linear warm-up, then half-cosine down to ``min_lr_ratio`` x the
peak. It is transformers' own (``get_cosine_with_min_lr_schedule_with_warmup``); :func:`lr_factor` is the same
curve as a function of the step, for loops that set the rate themselves (pretraining under DeepSpeed)."""
from __future__ import annotations

import functools

import torch


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps,
                                                       num_training_steps=max(1, total_steps),
                                                       min_lr_rate=min_lr_ratio)


@functools.lru_cache(maxsize=16)
def _curve(total_steps: int, warmup_steps: int, min_lr_ratio: float):
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return cosine_schedule(probe, total_steps, warmup_steps, min_lr_ratio).lr_lambdas[0]


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the peak rate at ``step`` (0-based): :func:`cosine_schedule`'s own curve."""
    return float(_curve(total_steps, warmup_steps, min_lr_ratio)(step))
