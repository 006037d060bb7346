"""Recipe ``mosaic-alm import``: one of the paper's released AudioMosaic checkpoints as a kit folder.

    mosaic-alm import hanxunh/AudioMosaic-vit-b16-pretrained runs/paper/pretrained      # downloads if online
    mosaic-alm import ~/dl/AudioMosaic-vit-b16-finetune-as2m runs/paper/as2m            # a Hub repo folder
    mosaic-alm import experiments/pretrain/checkpoints/model_state_dict.pt runs/paper/mine   # a training checkpoint

The folder (``model.safetensors``, ``config.json``, the feature extractor, a model card naming the source) is
accepted by every command that takes an encoder, and classifiers by ``mosaic-alm tag`` (:mod:`encoder.release`).
"""
from __future__ import annotations

import argparse
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mosaic-alm import", description="a released AudioMosaic checkpoint as a kit "
                                 "folder (Hub id or folder, or a reference training checkpoint .pt)")
    ap.add_argument("source", help="hanxunh/AudioMosaic-... (Hub id), a downloaded repo folder, or model_state_dict.pt")
    ap.add_argument("out", help="output folder")
    ap.add_argument("--keep-projector", action="store_true", help="keep the pretrain model's contrastive projector")
    ap.add_argument("--pooling", choices=("avg", "cls"), default=None,
                    help="the reference's pooling when the source does not say (training checkpoints: avg)")
    ap.add_argument("--target-frames", type=int, default=None,
                    help="input length; the learned positions are resized as the reference's loaders do")
    ap.add_argument("--num-heads", type=int, default=None, help="attention heads (default: config, else dim / 64)")
    ap.add_argument("--model-class", default=None, help="the reference class of a training checkpoint when its "
                    "tensors do not tell (AudioMosaicLayerProbe looks like AudioMosaicClassifier)")
    ap.add_argument("--probe-layer", type=int, default=None, help="layer-probe checkpoints: the block read")
    ap.add_argument("--preset", choices=("audioset", "esc50", "speechcommands"), default=None,
                    help="normalisation constants when the source does not carry them (default: by input length)")
    labels = ap.add_mutually_exclusive_group()
    labels.add_argument("--multi-label", dest="multi_label", action="store_true", default=None)
    labels.add_argument("--single-label", dest="multi_label", action="store_false")
    args = ap.parse_args(argv)

    from encoder.hf import import_release

    opts = {k: getattr(args, k) for k in ("keep_projector", "pooling", "target_frames", "num_heads", "probe_layer",
                                          "preset", "multi_label", "model_class")}
    from mosaic_core.config import ConfigError

    if args.target_frames is not None and (args.target_frames < 16 or args.target_frames % 16):
        raise ConfigError(f"--target-frames must be a positive multiple of 16, got {args.target_frames}")
    out = import_release(args.source, args.out, **opts)
    from encoder.hf import AudioMosaicConfig

    cfg = AudioMosaicConfig.from_pretrained(str(out))
    src, head = cfg.source, cfg.head_config()
    print(f"imported {src['repo'] or src['path']} ({src['class']}) -> {out}")
    print(f"  encoder: {cfg.embed_dim}-d, {cfg.depth} blocks, {cfg.num_heads} heads, input {cfg.target_frames} frames"
          f" x {cfg.num_mel_bins} bins, normalisation (x - ({cfg.norm_mean})) / (2 x {cfg.norm_std})")
    if head:
        print(f"  head: {head.kind}, {head.num_labels} labels ({'sigmoid' if head.multi_label else 'softmax'})")
    if src.get("dropped"):
        print(f"  not imported (training-time extras): {', '.join(src['dropped'])}")
    if (out / "audio_projector.json").is_file():
        print("  LTU audio projection: audio_projector.safetensors (projector kind ltu)")
    return 0
