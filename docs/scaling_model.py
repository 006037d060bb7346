"""The memory and time model of docs/SCALING.md, as arithmetic: ``python docs/scaling_model.py`` prints its tables.

No torch, no GPU: every constant below is either the recipe (configs/pretrain/vit_base.yaml), a vendor peak, or a
figure measured in this repository (results/, named where it is used).
"""
from __future__ import annotations

import math

# ---- the recipe: ViT-B/16 on 1024 x 128 fbanks, structured views, batch 512, AudioSet-2M, 400 epochs
H, L, HEADS, PATCH = 768, 12, 12, 16
FRAMES, MELS = 1024, 128
N_TIME, N_FREQ = FRAMES // PATCH, MELS // PATCH  # 64 x 8 patch grid, 512 patches per view
TIME_DROP, FREQ_DROP = 0.6, 0.4  # fractions DROPPED (masking.time_ratio / freq_ratio)
BATCH, CLIPS, EPOCHS = 512, 2_000_000, 400
PARAMS_ENCODER, PARAMS_PROJECTOR = 85_255_680, 459_776  # counted from the model (count_parameters)
PSI = PARAMS_ENCODER + PARAMS_PROJECTOR
MiB, GiB = 2**20, 2**30


def kept(n: int, drop: float) -> int:  # encoder.masking.kept_count
    return max(1, math.floor(n * (1.0 - drop) + 1e-9))


TOK_TIME = kept(N_TIME, TIME_DROP) * N_FREQ  # 25 columns x 8 = 200
TOK_FREQ = N_TIME * kept(N_FREQ, FREQ_DROP)  # 64 x 4 rows = 256 (0.6 x 8 = 4.8 rounds down to 4)
TOK_FULL = N_TIME * N_FREQ  # 512


def fwd_flops_per_clip(views=(TOK_TIME, TOK_FREQ), h=H, layers=L, proj=(512, 128)) -> float:
    """Forward FLOPs (2 per multiply-add) of one clip's views: per view of n patches (+1 CLS token), each block
    24 h^2 per token (qkv 6h^2, out 2h^2, MLP 16h^2) + 4 n^2 h (QK^T and AV), the patch embedding 2*16*16*h per
    patch, and the projector on the pooled vector. LayerNorm, softmax, GELU: element-wise, not counted."""
    f = 0.0
    for n_patch in views:
        n = n_patch + 1
        f += layers * (24 * h * h * n + 4 * n * n * h) + 2 * PATCH * PATCH * h * n_patch
        f += 2 * (h * proj[0] + proj[0] * proj[1])
    return f


def attention_fwd_flops(views=(TOK_TIME, TOK_FREQ), h=H, layers=L) -> float:
    return sum(layers * 4 * (n + 1) ** 2 * h for n in views)


def train_flops_per_clip(views=(TOK_TIME, TOK_FREQ), gradcache=False) -> float:
    """Backward = 2 x forward; GradCache adds one more forward (the no-grad pass before the replay)."""
    return (4.0 if gradcache else 3.0) * fwd_flops_per_clip(views)


# ---- memory
def static_bytes(stage: int, n_gpus: int, psi: int = PSI) -> float:
    """Mixed-precision Adam under DeepSpeed bf16 (ZeRO paper accounting): bf16 weights 2, bf16 gradients 2, fp32
    master weights + Adam m + v 12 bytes per parameter; ZeRO-1 partitions the 12, ZeRO-2 also the gradients,
    ZeRO-3 also the weights. Plus ZeRO-2's reduce/all-gather buckets (2 x 5e7 bf16 elements, zero2.json)."""
    k = 12
    if stage == 0:
        return (2 + 2 + k) * psi
    if stage == 1:
        return (2 + 2) * psi + k * psi / n_gpus
    if stage == 2:
        return 2 * psi + (2 + k) * psi / n_gpus + 2 * 5e7 * 2
    return (2 + 2 + k) * psi / n_gpus


# bytes kept for backward per token per block, from the block's saved tensors (see SCALING.md):
#   bf16 autocast: LN1 in 4h + qkv in 2h + q,k,v 6h + attn out 2h + proj in 2h + LN2 in 4h + fc1 in 2h
#                  + fc1 out 8h + GELU out 8h = 38h
#   fp32:          4h + 4h + 12h + 4h + 4h + 4h + 4h + 16h + 16h = 68h
ACT_BYTES_PER_TOKEN_LAYER = {"bf16": 38 * H, "fp32": 68 * H}


def act_bytes_per_clip(precision="bf16", views=(TOK_TIME, TOK_FREQ)) -> float:
    return ACT_BYTES_PER_TOKEN_LAYER[precision] * L * sum(n + 1 for n in views)


# measured on the H200 (results/gpu): peak memory at batch 32 and 128, MiB -> per-clip slope
MEASURED_PEAK_MIB = {("structured", "fp32"): (9652.1, 35379.4), ("structured", "bf16"): (6097.6, 20654.0),
                     ("unmasked", "fp32"): (19975.8, 76492.8), ("unmasked", "bf16"): (11925.1, 43770.9)}
MEASURED_S = {("structured", "fp32"): (0.21331, 0.75642), ("structured", "bf16"): (0.043717, 0.126415),
              ("unmasked", "fp32"): (0.45900, 1.76152), ("unmasked", "bf16"): (0.076523, 0.260808)}
COUNTED_GFLOP_PER_CLIP_GPU = {"structured": 7934.267326464 / 32, "unmasked": 18930.521309184 / 32}


def measured_slope_mib(mode, precision) -> float:
    a, b = MEASURED_PEAK_MIB[(mode, precision)]
    return (b - a) / 96


# ---- time: t_step = t_fixed + clips_per_gpu * t_clip + t_comm, calibrated on the H200 bf16 structured pair
PEAK_BF16 = {"H100/H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core FLOP/s
_s32, _s128 = MEASURED_S[("structured", "bf16")]
T_CLIP_H200 = (_s128 - _s32) / 96  # s per clip (marginal)
T_FIXED = _s32 - 32 * T_CLIP_H200  # s per step: kernel launches, optimizer, loss
MFU_MARGINAL = COUNTED_GFLOP_PER_CLIP_GPU["structured"] * 1e9 / T_CLIP_H200 / PEAK_BF16["H100/H200"]


def comm_s(n_gpus: int, gpus_per_node: int = 8, psi: int = PSI) -> float:
    """ZeRO-2 moves ~2 x 2 psi bytes per GPU per step (bf16 reduce-scatter of gradients + all-gather of updated
    weights; the same volume as DDP's all-reduce). Bus bandwidth assumed: 300 GB/s inside a node (NVLink),
    40 GB/s per GPU across nodes (8 x 400 Gb/s InfiniBand per node, ~80 % achieved)."""
    if n_gpus == 1:
        return 0.0
    bw = 300e9 if n_gpus <= gpus_per_node else 40e9
    return 2 * 2 * psi * (n_gpus - 1) / n_gpus / bw


def step_s(n_gpus: int, gpu="H100/H200", gradcache=False) -> float:
    clips = BATCH / n_gpus
    t_clip = T_CLIP_H200 * PEAK_BF16["H100/H200"] / PEAK_BF16[gpu] * (4 / 3 if gradcache else 1.0)
    return T_FIXED + clips * t_clip + comm_s(n_gpus)


def max_chunk(capacity_gib: float, stage: int, n_gpus: int, per_clip_mib: float) -> int:
    """Clips whose activations fit: 90 % of the card, less the static state and 1 GiB (CUDA context, workspace)."""
    free = 0.9 * capacity_gib * GiB - static_bytes(stage, n_gpus) - 1 * GiB
    return int(free // (per_clip_mib * MiB))


def chunk_setting(per_gpu: int, fit: int) -> str:
    if per_gpu <= fit:
        return "0 (off)"
    c = 1
    while c * 2 <= fit and per_gpu % (c * 2) == 0:
        c *= 2
    return str(c)


def main() -> None:
    f_s, f_u = fwd_flops_per_clip(), fwd_flops_per_clip((TOK_FULL, TOK_FULL))
    print(f"tokens per clip (both views): {TOK_TIME} + {TOK_FREQ} = {TOK_TIME + TOK_FREQ} of {2 * TOK_FULL}")
    print(f"parameters: {PSI:,} (encoder {PARAMS_ENCODER:,}, projector {PARAMS_PROJECTOR:,})")
    print(f"forward GFLOP/clip: structured {f_s / 1e9:.2f}, unmasked {f_u / 1e9:.2f}; train x3: "
          f"{3 * f_s / 1e9:.2f} / {3 * f_u / 1e9:.2f}; ratio {f_s / f_u:.3f}")
    a_s, a_u = attention_fwd_flops(), attention_fwd_flops((TOK_FULL, TOK_FULL))
    print(f"  + fused-attention backward recompute (GPU counter): {(3 * f_s + a_s / 2) / 1e9:.2f} / "
          f"{(3 * f_u + a_u / 2) / 1e9:.2f}; without attention (CPU counter): {(3 * f_s - 3 * a_s) / 1e9:.2f} / "
          f"{(3 * f_u - 3 * a_u) / 1e9:.2f}")
    print(f"per step (512 clips): {BATCH * 3 * f_s / 1e12:.1f} TFLOP; 400 epochs: {EPOCHS * CLIPS * 3 * f_s:.3e} FLOP")
    print("static bytes/GPU (GiB) by ZeRO stage, N=1/8/16/64:")
    for st in (0, 1, 2, 3):
        print(f"  stage {st}: " + ", ".join(f"{static_bytes(st, n) / GiB:.2f}" for n in (1, 8, 16, 64)))
    for prec in ("bf16", "fp32"):
        for mode, views in (("structured", (TOK_TIME, TOK_FREQ)), ("unmasked", (TOK_FULL, TOK_FULL))):
            print(f"activations/clip {mode} {prec}: model {act_bytes_per_clip(prec, views) / MiB:.1f} MiB, "
                  f"measured slope {measured_slope_mib(mode, prec):.1f} MiB")
    print(f"H200 calibration: t_clip {T_CLIP_H200 * 1e3:.3f} ms, t_fixed {T_FIXED * 1e3:.1f} ms, "
          f"marginal MFU {MFU_MARGINAL:.3f}")
    steps = EPOCHS * (CLIPS // BATCH)
    print(f"steps: {steps:,}")
    print("| N | clips/GPU | step s (H100/H200) | comm ms | wall h | GPU-h H100/H200 | GPU-h A100 | "
          "chunk 40/80/141 GB |")
    for n in (1, 8, 16, 64):
        per = BATCH // n
        fits = [max_chunk(c, 2, n, act_bytes_per_clip() / MiB) for c in (40, 80, 139.8)]
        t = step_s(n)
        ta = step_s(n, "A100", gradcache=per > fits[0])
        print(f"| {n} | {per} | {t:.4f} | {comm_s(n) * 1e3:.1f} | {steps * t / 3600:.1f} | {n * steps * t / 3600:.0f}"
              f" | {n * steps * ta / 3600:.0f} | " + " / ".join(chunk_setting(per, f) for f in fits)
              + f" (fit {fits[0]}/{fits[1]}/{fits[2]}) |")
    # predictions of points NOT used in the calibration
    for mode in ("unmasked",):
        for i, b in enumerate((32, 128)):
            pred = T_FIXED + b * T_CLIP_H200 * COUNTED_GFLOP_PER_CLIP_GPU[mode] / COUNTED_GFLOP_PER_CLIP_GPU[
                "structured"]
            print(f"H200 bf16 {mode} b{b}: predicted {pred:.4f} s, measured {MEASURED_S[(mode, 'bf16')][i]:.4f} s")
    for mode, views in (("structured", (TOK_TIME, TOK_FREQ)), ("unmasked", (TOK_FULL, TOK_FULL))):
        for prec, static in (("bf16", 14 * PSI), ("fp32", 12 * PSI)):
            for i, b in enumerate((32, 128)):
                pred = (static + b * act_bytes_per_clip(prec, views)) / MiB
                print(f"H200 peak {mode} {prec} b{b}: predicted {pred:.0f} MiB, measured "
                      f"{MEASURED_PEAK_MIB[(mode, prec)][i]:.0f} MiB "
                      f"({pred / MEASURED_PEAK_MIB[(mode, prec)][i] - 1:+.1%})")

    # CPU points (results/bench_masking_step_vit_base.json, results/pretrain_tiny.json,
    # docs/ARCHITECTURE.md "Stack facts")
    f8 = 8 * train_flops_per_clip()
    print(f"CPU ViT-B batch 8 structured: {f8 / 1e9:.0f} GFLOP/step; at 206 GFLOP/s (fp32) {f8 / 206e9:.1f} s, "
          f"at 904 GFLOP/s (bf16) {f8 / 904e9:.1f} s, + AdamW 1.3-2.2 s")
    rss = 16 * PSI / MiB
    for mode, views, meas in (("structured", (TOK_TIME, TOK_FREQ), 4232.6), ("unmasked", (TOK_FULL, TOK_FULL), 7722.2)):
        pred = rss + 8 * act_bytes_per_clip("fp32", views) / MiB
        print(f"CPU peak RSS {mode} fp32 b8: model {pred:.0f} MiB + interpreter/libraries, measured {meas:.0f} MiB")
    tiny = 3 * fwd_flops_per_clip((kept(8, TIME_DROP) * 8, 8 * kept(8, FREQ_DROP)), h=192, layers=6)
    print(f"tiny (192-d, 6 blocks, 128 frames) train GFLOP/clip: {tiny / 1e9:.3f}; 1 thread at 103 GFLOP/s: "
          f"{103e9 / tiny:.0f} clips/s; measured 90 (stack facts, fp32), "
          f"{600 * 64 / 1234:.0f} (pretrain_tiny.json, loaded)")
    per_node_clips = 8 * (BATCH / 8) / step_s(8)
    print(f"input pipeline at N=8: {per_node_clips:.0f} clips/s per 8-GPU node; at 47 ms CPU per 10 s clip "
          f"(decode + 2 augmented views + 2 fbanks, measured here) = {per_node_clips * 0.047:.0f} cores")


if __name__ == "__main__":
    main()
