"""Seeds, devices, CPU threads and precision, and the DeepSpeed-on-CPU launch workaround: one home each."""
from __future__ import annotations

import contextlib
import functools
import os
import random

import numpy as np
import torch


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one. The kit's one place for it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1

def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> this process's GPU (``LOCAL_RANK``) when CUDA is there, else the CPU; any other torch name as is."""
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
            return device
        return torch.device("cpu")
    return torch.device(name)


_POOL_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def set_threads(threads: int) -> None:
    """``threads > 0``: at most this many compute threads in this process (tiny models on a busy CPU run fastest on
    1): torch's intra-op threads and the BLAS / OpenMP pools of numpy, scipy and scikit-learn, those loaded now
    (threadpoolctl) and those loaded later (their environment variables, read when they load; child processes
    inherit them). Without the pools, a logistic-regression read-out beside a training process ran numpy's and
    scipy's OpenBLAS worker threads at ~50% of a core each, spinning. 0 keeps the defaults."""
    if threads > 0:
        torch.set_num_threads(threads)
        for var in _POOL_VARS:
            os.environ[var] = str(threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)


@functools.lru_cache(maxsize=1)
def cpu_bf16_isa() -> str | None:
    """The CPU's native bf16 instructions (``amx_bf16`` or ``avx512_bf16``) from /proc/cpuinfo, or None."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")),
                     [])
    except OSError:
        return None
    for isa in ("amx_bf16", "avx512_bf16"):
        if isa in flags:
            return isa
    return None


def use_bf16(precision: str, device: torch.device) -> bool:
    """``bf16``/``fp32`` as asked; ``auto`` -> bf16 autocast where the hardware computes it natively: a GPU that
    supports it, or a CPU with AMX or AVX512-BF16 (:func:`cpu_bf16_isa`; measured to track fp32, see
    ``results/README.md``); fp32 elsewhere. ``MOSAIC_ALM_PRECISION=fp32`` turns ``auto`` into fp32 everywhere."""
    if precision == "auto":
        if os.environ.get("MOSAIC_ALM_PRECISION", "").lower() == "fp32":
            return False
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return device.type == "cpu" and cpu_bf16_isa() is not None
    return precision == "bf16"


def precision_note(enabled: bool, device: torch.device) -> str:
    """One line for a run log: the precision in use and why (the CPU's bf16 instructions, if any)."""
    isa = cpu_bf16_isa() if device.type == "cpu" else None
    if enabled:
        return f"bf16 autocast on {device.type}" + (f" (native {isa})" if isa else "")
    return f"fp32 on {device.type}" + (" (no native bf16 on this CPU)" if device.type == "cpu" and not isa else "")


def autocast(enabled: bool, device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def matmul_gflops(bf16: bool, seconds: float = 1.0, size: int = 1024) -> float:
    """This machine's dense matmul throughput (GFLOP/s) in the precision the stages would run in, with torch's
    current thread count: square ``size`` matmuls repeated for about ``seconds`` (one warm-up first)."""
    import time

    a, b = torch.randn(size, size), torch.randn(size, size)
    with autocast(bf16, torch.device("cpu")):
        a @ b
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            n += 1
    return 2 * size ** 3 * n / (time.perf_counter() - t0) / 1e9


def deepspeed_cpu_workaround() -> None:
    """On CPU, skip DeepSpeed's shared-memory comm op: it needs a 76 s JIT C++ build, and gloo alone is enough
    (``MOSAIC_ALM_DS_SHM=1`` keeps it). Call before ``deepspeed.init_distributed`` / ``initialize``."""
    if torch.cuda.is_available() or os.environ.get("MOSAIC_ALM_DS_SHM", "0") == "1":
        return
    import importlib

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def single_process_dist_env(port: str = "29513") -> None:
    """The environment a one-process torch.distributed / DeepSpeed group needs when no launcher set it."""
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": os.environ.get("MASTER_PORT", port)}.items():
        os.environ.setdefault(k, v)
