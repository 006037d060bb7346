"""The default pipeline's wall time on this machine, and the ALM budget sized to fit a target.

Each job of the default pipeline (data, the two pretrainings, the encoder evaluation, the three ALM variants, the ALM
evaluation) costs ``a + b / G`` seconds on one core, ``G`` being the machine's dense matmul throughput (GFLOP/s on
2 threads, in the precision the stages run in: :func:`mosaic_core.runtime.matmul_gflops`); an ALM variant's
training loops and projector alignment, another ``sa + sb / G``, are what the budget scale ``s`` multiplies (every
ALM stage's training examples and the alignment steps). :func:`predict_seconds` runs the pipeline's own schedule
on two cores with those costs (the order of ``recipes/pipeline.py``: the data first, the contrastive pretraining
with the MAE baseline beside it, each ALM variant as soon as it is ready and a core is free -- pretrained, no
audio, random -- the encoder evaluation last, the ALM evaluation when the pretrained and no-audio variants are done).
:func:`size_budget` picks the largest scale whose predicted wall time fits the target, never below a floor. The
constants are fitted to fresh-clone runs of the default at the full budget (``DEFAULT_COSTS``, made by
``results/pipeline_budget/fit.py``).
"""
from __future__ import annotations

import heapq
import math

# seconds = a + b / G (+ s * (sa + sb / G) for an ALM variant's training loops; its projector alignment is in a and
# b: the scale does not shorten it), fitted by results/pipeline_budget/fit.py to the
# default's fresh-clone runs in results/pipeline_budget (fp32 at G 175 and bf16 at G 366 on one 2-core AMD EPYC with
# AVX512-BF16, at the full budget)
FITTED_COSTS = {
    "source": "results/pipeline_budget",
    "jobs": {
        "data": {"a": 48.5, "b": 0.0},
        "pretrain_audiomosaic": {"a": 279.5, "b": 53326.0},
        "pretrain_mae": {"a": 242.3, "b": 6415.0},
        "eval_encoder": {"a": 231.3, "b": 23931.0},
        "eval_alm": {"a": 179.8, "b": 0.0},
        "no_audio": {"a": 68.8, "b": 4602.0, "sa": 311.1, "sb": 39943.0},
        "pretrained": {"a": 249.8, "b": 30551.0, "sa": 285.9, "sb": 66683.0},
        "random": {"a": 299.5, "b": 22490.0, "sa": 327.4, "sb": 56007.0},
    },
}
# The projector alignment inside the pretrained and random variants' a and b: 222-231 s at G 175 (fp32) and 181-196 s
# at G 366 (bf16) in those runs, i.e. 153 + 12,743 / G, with nn.MultiheadAttention's kernel. The query-side attention
# (encoder/query_attention.py) runs those steps 2.8x (fp32) to 3.5x (bf16) faster (results/projector_align.json), so
# the default's costs take two thirds of that term out of both variants.
ALIGNMENT_FITTED = {"a": 153.2, "b": 12743.0}
ALIGNMENT_SAVED = 2 / 3


def _faster_alignment(costs: dict) -> dict:
    jobs = {name: dict(j) for name, j in costs["jobs"].items()}
    for name in ("pretrained", "random"):
        for k in ("a", "b"):
            jobs[name][k] = round(jobs[name][k] - ALIGNMENT_SAVED * ALIGNMENT_FITTED[k], 1)
    return {"source": f"{costs['source']} (alignment 3x faster: results/projector_align.json)", "jobs": jobs}


DEFAULT_COSTS = _faster_alignment(FITTED_COSTS)
VARIANT_ORDER = ("pretrained", "no_audio", "random")
# The unlabeled corpus (pretrain_data: corpus), measured in results/pipeline_corpus (bf16, G 398, 38,400 clips):
# building it costs the data job 4.1 ms a clip (156 s), and a pretraining that streams its clips from the shards
# (FLAC decode + fbank per clip, instead of fbanks cached once) 3.0 ms a clip read (contrastive 532 s against the
# 413 the costs above predict, the MAE beside it 370 against 258); neither is matmul-bound, so both are a-terms.
CORPUS_SECONDS_PER_CLIP = {"build": 156.0 / 38400, "stream": 3.0e-3}


def with_corpus(costs: dict, corpus_clips: int, clips_read: int) -> dict:
    """``costs`` for a run whose pretrainings read an unlabeled corpus of ``corpus_clips`` it builds first, each
    reading ``clips_read`` clips (steps x batch) from its shards."""
    if corpus_clips <= 0:
        return costs
    jobs = {name: dict(j) for name, j in costs["jobs"].items()}
    jobs["data"]["a"] += CORPUS_SECONDS_PER_CLIP["build"] * corpus_clips
    for name in ("pretrain_audiomosaic", "pretrain_mae"):
        jobs[name]["a"] += CORPUS_SECONDS_PER_CLIP["stream"] * clips_read
    return {"source": f"{costs['source']} + results/pipeline_corpus (the corpus)", "jobs": jobs}


def job_seconds(costs: dict, gflops: float, scale: float = 1.0) -> dict[str, float]:
    """Each job's seconds on one core at throughput ``gflops`` and ALM budget ``scale``."""
    g = max(gflops, 1.0)
    return {name: max(0.0, j["a"] + j["b"] / g) + scale * max(0.0, j.get("sa", 0.0) + j.get("sb", 0.0) / g)
            for name, j in costs["jobs"].items()}


def predict_seconds(costs: dict, gflops: float, scale: float = 1.0, cores: int = 2) -> float:
    """The pipeline's wall time: its schedule run on ``cores`` cores with the fitted job costs."""
    t = job_seconds(costs, gflops, scale)
    now = t["data"]
    running: list[tuple[float, str]] = []  # (end time, job), a heap
    done: set[str] = {"data"}
    waiting = [v for v in VARIANT_ORDER if v in t]
    late = ["eval_encoder"]  # handed to the runner after both pretrainings
    main = ["pretrain_audiomosaic"]  # the main process: contrastive pretraining, later the ALM evaluation

    def start(job: str) -> None:
        heapq.heappush(running, (now + t[job], job))

    start(main.pop())
    start("pretrain_mae")
    while running or waiting or late:
        ready = [v for v in waiting if v != "pretrained" or "pretrain_audiomosaic" in done]
        ready += [j for j in late if {"pretrain_audiomosaic", "pretrain_mae"} <= done]
        if "eval_alm" not in done and {"pretrained", "no_audio"} <= done and all(j != "eval_alm" for _, j in running):
            ready.insert(0, "eval_alm")  # the main process takes the next free core for it
        while len(running) < cores and ready:
            job = ready.pop(0)
            for pool in (waiting, late):
                if job in pool:
                    pool.remove(job)
            start(job)
        if not running:
            break
        now, job = heapq.heappop(running)
        done.add(job)
    return now


def size_budget(gflops: float, target_minutes: float, floor: float, costs: dict = DEFAULT_COSTS) -> dict:
    """The ALM budget scale for this machine: 1 where the full budget is predicted to fit ``target_minutes``, else
    the largest scale that does (to 0.01), at least ``floor``. Returns the scale, both predictions and why."""
    target = target_minutes * 60
    full = predict_seconds(costs, gflops, 1.0)
    if full <= target:
        scale, why = 1.0, (f"the full ALM budget: predicted {full / 60:.0f} min at {gflops:.0f} GFLOP/s, within "
                           f"{target_minutes:g}")
    else:
        scale = max([floor] + [s / 100 for s in range(int(floor * 100), 100)
                               if predict_seconds(costs, gflops, s / 100) <= target])
        why = (f"the ALM budget scaled to {scale:.2f}: the full one is predicted to take {full / 60:.0f} min at "
               f"{gflops:.0f} GFLOP/s, over the {target_minutes:g}-minute target")
    at = predict_seconds(costs, gflops, scale)
    if at > target:
        why += f" (the scale's floor, {floor:g}: the run is predicted to take {at / 60:.0f} min)"
    return {"scale": round(scale, 3), "predicted_minutes": round(at / 60, 1),
            "predicted_minutes_full": round(full / 60, 1), "target_minutes": target_minutes, "floor": floor,
            "matmul_gflops": round(gflops, 1), "model": costs["source"], "why": why}


def scaled_count(value: int, scale: float, multiple: int = 1) -> int:
    """``value`` times ``scale``, rounded up to a multiple of ``multiple`` (0 stays 0: a skipped stage)."""
    if value <= 0 or scale >= 1:
        return value
    return max(multiple, math.ceil(value * scale / multiple) * multiple)


__all__ = ["DEFAULT_COSTS", "FITTED_COSTS", "job_seconds", "predict_seconds", "size_budget", "scaled_count",
           "with_corpus"]
