"""The default pipeline's wall time on this machine and the ALM budget sized to fit it.

The wall time is modelled from the machine's dense matmul throughput ``G`` (GFLOP/s on 2 threads, in the precision
the stages run in, :func:`mosaic_core.runtime.matmul_gflops`) as ``T(G, s) = a + (b_rest + s * b_alm) / G``: ``a``
seconds of work that does not scale with matmul speed (data, I/O, Python, generation), the compute of everything
but the ALM's training (pretraining, encoder evaluation, ALM evaluation), and the compute of the ALM's training,
which the budget scale ``s`` multiplies (the training examples of every ALM stage and the projector-alignment
steps). The constants are fitted to fresh-clone runs of the default (the values and the runs:
``DEFAULT_MODEL``). A machine whose predicted time at the full budget is over the target gets the largest scale
that meets it, never below ``floor``; the pipeline records which budget ran and why (``pipeline.json`` ``budget``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CostModel:
    a: float  # seconds that do not scale with matmul throughput
    b_rest: float  # GFLOP-seconds of everything but the ALM training, over G
    b_alm: float  # GFLOP-seconds of the ALM training at the full budget, over G
    source: str = ""

    def seconds(self, gflops: float, scale: float = 1.0) -> float:
        return self.a + (self.b_rest + scale * self.b_alm) / max(gflops, 1.0)

    def scale_for(self, gflops: float, target_s: float) -> float:
        """The ALM budget scale whose predicted wall time is ``target_s`` (may be above 1 or below 0)."""
        return (target_s - self.a - self.b_rest / max(gflops, 1.0)) * max(gflops, 1.0) / self.b_alm


# fitted to two fresh-clone runs of the default with length-grouped ALM batches at the full budget, nothing else on
# the cores: results/pipeline_budget (fp32 and bf16 on one 2-core AMD EPYC with AVX512-BF16)
DEFAULT_MODEL = CostModel(a=627.0, b_rest=118_600.0, b_alm=150_000.0, source="results/pipeline_budget")


def size_budget(gflops: float, target_minutes: float, floor: float, model: CostModel = DEFAULT_MODEL) -> dict:
    """The ALM budget scale for this machine: 1 where the full budget is predicted to fit ``target_minutes``, else
    the largest scale that does, at least ``floor``. Returns the scale, both predictions and a sentence saying why."""
    target = target_minutes * 60
    full = model.seconds(gflops)
    if full <= target:
        scale, why = 1.0, (f"the full ALM budget: predicted {full / 60:.0f} min at {gflops:.0f} GFLOP/s, within "
                           f"{target_minutes:g}")
    else:
        scale = max(floor, min(1.0, model.scale_for(gflops, target)))
        why = (f"the ALM budget scaled to {scale:.2f}: the full one is predicted to take {full / 60:.0f} min at "
               f"{gflops:.0f} GFLOP/s, over the {target_minutes:g}-minute target")
        if scale == floor:
            why += (f" (the scale's floor, {floor:g}: the run is predicted to take "
                    f"{model.seconds(gflops, scale) / 60:.0f} min)")
    return {"scale": round(scale, 3), "predicted_minutes": round(model.seconds(gflops, scale) / 60, 1),
            "predicted_minutes_full": round(full / 60, 1), "target_minutes": target_minutes, "floor": floor,
            "matmul_gflops": round(gflops, 1), "model": model.source, "why": why}


def scaled_count(value: int, scale: float, multiple: int = 1) -> int:
    """``value`` times ``scale``, rounded up to a multiple of ``multiple`` (0 stays 0: a skipped stage)."""
    if value <= 0 or scale >= 1:
        return value
    return max(multiple, math.ceil(value * scale / multiple) * multiple)


__all__ = ["CostModel", "DEFAULT_MODEL", "size_budget", "scaled_count"]
