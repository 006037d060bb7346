"""The paper's released AudioMosaic checkpoints as kit encoders: read, convert, check, write.

Sources (:func:`read_release`):

- a released Hugging Face repo folder (``hanxunh/AudioMosaic-*``): ``config.json`` (the reference class's constructor
  arguments, ``model_class``, ``audio_preprocessing``) + ``model.safetensors``; the LTU stage-4 repo instead holds
  ``extra_weights.bin`` (the audio encoder and its projection, read through torch's restricted unpickler);
- a Hub id (``hanxunh/AudioMosaic-vit-b16-pretrained``): downloaded when the Hub can be reached, otherwise one line
  saying which command fetches it;
- the reference's own training checkpoint (``model_state_dict.pt``: a torch pickle of a state dict, keys possibly
  prefixed ``module.`` / ``_orig_mod.``), read only with ``torch.load(weights_only=True)``; a pickle that would run
  code is refused in one line.

Every released class maps onto the kit's ViT (:class:`encoder.vit.EncoderConfig` with ``patch_norm``,
``pre_norm``, learned positions and the class's norm and pooling semantics) and, for classifiers and probes, a head
(:mod:`encoder.heads`). Unsupported variants (the AASIST spoof head, RMSNorm, qk-norm, fusion pooling) are refused in
one line. Conversion is strict: every source tensor is used or named as deliberately dropped, and every kit tensor is
filled. Equivalence with the reference code is tested on golden fixtures made by running it
(``tests/fixtures/audiomosaic/``).

Preprocessing travels with the model: ``target_frames``, ``norm_mean`` and ``norm_std`` of the checkpoint's training
set (AudioSet 1,024 frames, ESC-50 512, Speech Commands 128). The kit normalises by ``2 * std``, which is what the
reference's training pipeline fed the weights; the ``preprocess()`` shipped in the released repos divides by ``std``
alone (twice the intended input scale: on the kit's own encoder trained at 2 x std, a read-out fitted on the
trained scale falls from 0.82 to 0.12 keyword accuracy on the released scale; results/release_normalisation/).
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoint import CheckpointError, require_safetensors, safe_torch_load
from .heads import HeadConfig
from .vit import PRESETS, EncoderConfig, resize_learned_positions

HUB_ORG = "hanxunh"
REFERENCE = "https://github.com/HanxunH/AudioMosaic (MIT licence), arXiv 2605.14231"

# training-set preprocessing constants (the reference's dataset options and its release script)
PREPROCESSING = {
    "audioset": {"target_length": 1024, "norm_mean": -4.2677393, "norm_std": 4.5689974},
    "esc50": {"target_length": 512, "norm_mean": -6.6268077, "norm_std": 5.358466},
    "speechcommands": {"target_length": 128, "norm_mean": -6.845978, "norm_std": 5.5654526},
}
_PRESET_BY_FRAMES = {v["target_length"]: k for k, v in PREPROCESSING.items()}

# the released repos: what the kit does with each (README table and model cards read this)
RELEASES = {
    "AudioMosaic-vit-b16-pretrained": ("AudioMosaicPretrain", "audioset", "the encoder (contrastive projector "
                                       "dropped, or kept with --keep-projector): ALM ear, probes, HEAR, fine-tuning"),
    "AudioMosaic-vit-b16-finetune-as20k": ("AudioMosaicClassifier", "audioset", "AudioSet tagger, 527 labels "
                                           "(sigmoid); its encoder everywhere"),
    "AudioMosaic-vit-b16-finetune-as2m": ("AudioMosaicClassifier", "audioset", "AudioSet tagger, 527 labels "
                                          "(sigmoid); its encoder everywhere"),
    "AudioMosaic-vit-b16-linear-prob-as20k": ("AudioMosaicClassifier", "audioset", "AudioSet linear probe, 527 "
                                              "labels (sigmoid)"),
    "AudioMosaic-vit-b16-linear-prob-as20k-attentive": ("AudioMosaicAttentiveProbe", "audioset", "AudioSet "
                                                        "attentive probe over the 13 layers, 527 labels (sigmoid)"),
    **{f"AudioMosaic-vit-b16-finetune-esc-split{i}": ("AudioMosaicClassifier", "esc50", "ESC-50 classifier, 50 "
                                                      "labels (softmax)") for i in range(1, 6)},
    "AudioMosaic-vit-b16-finetune-spc1": ("AudioMosaicClassifier", "speechcommands", "Speech Commands v1, 11 labels "
                                          "(softmax)"),
    "AudioMosaic-vit-b16-finetune-spc2": ("AudioMosaicClassifier", "speechcommands", "Speech Commands v2, 35 labels "
                                          "(softmax)"),
    "AudioMosaic-vit-b16-finetune-envsdd-ata": ("AudioMosaicClassifier", "audioset", "EnvSDD spoof detection, 2 "
                                                "labels (softmax; the release names no label order)"),
    "AudioMosaic-vit-b16-finetune-envsdd-tta": ("AudioMosaicClassifier", "audioset", "EnvSDD spoof detection, 2 "
                                                "labels (softmax; the release names no label order)"),
    "AudioMosaic-vit-b16-ltu-stage4": ("AudioMosaicLlamaForCausalLM", "audioset", "the LTU audio side: its encoder "
                                       "(ALM ear, probes, HEAR) and its audio projection (kit projector kind ltu); "
                                       "the 7B LLaMA and LoRA are not imported"),
}

SUPPORTED = ("AudioMosaicPretrain", "AudioMosaicTransformer", "AudioMosaicClassifier", "AudioMosaicLayerProbe",
             "AudioMosaicWeightedSumProbe", "AudioMosaicAttentiveProbe", "AudioMosaicLlamaForCausalLM")
REFUSED = {"AudioMosaicAASIST": "the AASIST spoof-detection head (EnvSDD *-aasist recipes) is not supported by the "
                                "kit; the -ata / -tta EnvSDD classifiers are",
           "LTULlamaForCausalLM": "the original LTU (CAV-MAE encoder) is not an AudioMosaic encoder"}
LABEL_SETS = {527: "audioset", 50: "esc50", 11: "speechcommands_v1", 35: "speechcommands_v2"}
LABEL_DIR = Path(__file__).resolve().parent / "labels"

# source tensors deliberately not imported (training-time extras of the reference's pretrain model)
_DROPPED = re.compile(r"^(online_classifier\.|logit_scale$|logit_bias$)")
_PICKLE = (".pt", ".pth", ".bin", ".ckpt")


class ReleaseError(CheckpointError):
    """A released checkpoint the kit cannot import; the message is one line naming it and why."""


# --------------------------------------------------------------------------------------------------- reading
def label_names(n: int, name: str | None = None) -> list[str]:
    """Label names for a head of ``n`` labels: AudioSet 527, ESC-50 50, Speech Commands v1 11 / v2 35 (the
    reference's CSVs), else ``label_<i>``."""
    which = name or LABEL_SETS.get(n)
    if which is None:
        return [f"label_{i}" for i in range(n)]
    with open(LABEL_DIR / f"{which}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != n:
        raise ReleaseError(f"label set {which} has {len(rows)} names, the head has {n} outputs")
    return [r["display_name"] for r in sorted(rows, key=lambda r: int(r["index"]))]


def strip_prefixes(state: dict) -> dict:
    """Drop the wrappers' key prefixes: ``module.`` (DDP) and ``_orig_mod.`` (torch.compile), in any order."""
    out = {}
    for k, v in state.items():
        while k.startswith(("module.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k.replace("._orig_mod.", ".")] = v
    return out


def is_hub_id(spec: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", spec)) and not Path(spec).expanduser().exists()


def is_release(spec) -> bool:
    """Whether ``spec`` names something :func:`read_release` reads (and not a kit folder)."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return path.suffix in _PICKLE
    if (path / "config.json").is_file():
        try:
            return "model_class" in json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return False
    return is_hub_id(spec) and spec.split("/")[1].startswith("AudioMosaic")


def download(repo_id: str, into: str | os.PathLike | None = None) -> Path:
    """A Hub repo's files (the LTU repo without its 7B LLaMA shards); offline, one line naming the command."""
    target = Path(into or Path(os.environ.get("MOSAIC_ALM_RELEASES", Path.home() / ".cache" / "mosaic-alm" /
                                              "releases")) / repo_id.replace("/", "--"))
    ltu = repo_id.endswith("ltu-stage4")
    patterns = ["*.json", "*.md", "extra_weights.bin"] if ltu else ["*.json", "*.md", "model.safetensors"]
    try:
        from huggingface_hub import snapshot_download

        if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
            raise OSError("HF_HUB_OFFLINE is set")
        return Path(snapshot_download(repo_id, local_dir=str(target), allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the Hub becomes the one line below
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReleaseError(f"{repo_id} is not on this machine and the Hub cannot be reached ({why}); on a machine "
                           f"with network run `hf download {repo_id} --local-dir {repo_id.split('/')[1]}` (or "
                           "huggingface-cli download), copy the folder here, then `mosaic-alm import "
                           f"{repo_id.split('/')[1]} OUT`") from None


def _tensor_dict(obj, source: str) -> dict:
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ReleaseError(f"{source}: not a state dict of tensors")
    return obj


def read_release(spec) -> dict:
    """``{"model_class", "config" (reference constructor args), "state" (prefix-free tensors), "preprocessing",
    "source", "repo"}`` of a released folder, Hub id or reference training checkpoint."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        if is_hub_id(spec):
            path = download(spec)
        else:
            raise ReleaseError(f"{spec}: no such file or folder (nor a Hub id like {HUB_ORG}/AudioMosaic-vit-b16-"
                               "pretrained)")
    if path.is_file():
        state = strip_prefixes(_tensor_dict(safe_torch_load(path), str(path)))
        return {"model_class": None, "config": {}, "state": state, "preprocessing": None, "source": str(path),
                "repo": None}
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ReleaseError(f"{path}: no config.json (a released repo folder holds config.json + model.safetensors)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise ReleaseError(f"{cfg_path}: not JSON ({exc})") from None
    if not isinstance(cfg, dict) or "model_class" not in cfg:
        raise ReleaseError(f"{cfg_path}: no model_class (not a released AudioMosaic repo)")
    cls = cfg.pop("model_class")
    if cls in REFUSED:
        raise ReleaseError(f"{path}: {cls}: {REFUSED[cls]}")
    if cls not in SUPPORTED:
        raise ReleaseError(f"{path}: model_class {cls!r} is not an AudioMosaic class the kit imports "
                           f"({', '.join(SUPPORTED)})")
    pre = cfg.pop("audio_preprocessing", None)
    if cls == "AudioMosaicLlamaForCausalLM":
        state = _ltu_audio_state(path)
    else:
        from safetensors.torch import load_file

        state = strip_prefixes(load_file(str(require_safetensors(path / "model.safetensors", f"release {path}"))))
    repo = cfg.pop("_name_or_path", None) or cfg.pop("repo_id", None) or path.name
    return {"model_class": cls, "config": cfg, "state": state, "preprocessing": pre, "source": str(path),
            "repo": repo if "/" in str(repo) else f"{HUB_ORG}/{repo}"}


def _ltu_audio_state(path: Path) -> dict:
    """The LTU repo's audio encoder + audio projection from its extra-weights file (restricted unpickler), keys
    re-rooted as ``audio_encoder.*`` / ``audio_proj.*``; LoRA and LLaMA tensors are left out."""
    for name in ("extra_weights.safetensors", "extra_weights.bin"):
        f = path / name
        if f.is_file():
            break
    else:
        raise ReleaseError(f"{path}: the LTU repo's extra_weights.bin (audio encoder + projection) is missing")
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(f))
    else:
        raw = _tensor_dict(safe_torch_load(f), str(f))
    state = {}
    for k, v in raw.items():
        for root in ("audio_encoder.", "audio_proj."):
            i = k.find(root)
            if i >= 0 and (i == 0 or k[i - 1] == "."):
                state[k[i:]] = v
                break
    if not any(k.startswith("audio_encoder.") for k in state):
        raise ReleaseError(f"{f}: holds no audio_encoder.* tensors")
    return strip_prefixes(state)


# ------------------------------------------------------------------------------------------------ conversion
def infer_class(state: dict) -> str:
    """The reference class a training checkpoint belongs to, from its keys."""
    if any(k.startswith("audio_encoder.") for k in state):
        return "AudioMosaicLlamaForCausalLM"
    if any(k.startswith(("LL.", "GAT_layer_S.", "master1")) for k in state):
        return "AudioMosaicAASIST"
    if any(k.startswith("projector.") for k in state):
        return "AudioMosaicPretrain"
    if any(k.startswith("layer_norms.") for k in state):
        return "AudioMosaicAttentiveProbe"
    if "layer_weights" in state:
        return "AudioMosaicWeightedSumProbe"
    if "head.weight" in state:
        return "AudioMosaicClassifier"
    return "AudioMosaicTransformer"


def _arch(state: dict, cfg: dict, what: str) -> dict:
    """Architecture fields from the weights (and the constructor arguments where weights cannot tell)."""
    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        raise ReleaseError(f"{what}: no cls_token / patch_embed.proj.weight: not an AudioMosaic ViT state dict")
    if "blocks.0.attn.q_norm.weight" in state or cfg.get("qk_norm"):
        raise ReleaseError(f"{what}: qk_norm is not supported by the kit's ViT")
    if cfg.get("norm_layer_type", "layernorm") != "layernorm" or ("patch_embed.norm.weight" in state and
                                                                  "patch_embed.norm.bias" not in state):
        raise ReleaseError(f"{what}: RMSNorm layers are not supported by the kit's ViT")
    if cfg.get("act_type", "gelu") != "gelu":
        raise ReleaseError(f"{what}: act_type {cfg['act_type']!r} is not supported (GELU only)")
    w = state["patch_embed.proj.weight"]
    if w.shape[1] != 1 or w.shape[2] != w.shape[3]:
        raise ReleaseError(f"{what}: patch projection {tuple(w.shape)}: the kit needs square patches of one channel")
    d, p = w.shape[0], w.shape[2]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if not depth:
        raise ReleaseError(f"{what}: no transformer blocks")
    spec = cfg.get("spec_size") or [None, 128]
    bins = int(spec[1])
    if "pos_embed" not in state:
        raise ReleaseError(f"{what}: no pos_embed (the released models have a learned [1, 1 + N, D] table)")
    n = state["pos_embed"].shape[1] - 1
    frames = int(spec[0]) if spec[0] else n // (bins // p) * p
    if (frames // p) * (bins // p) != n:
        raise ReleaseError(f"{what}: pos_embed has {n} patch slots, spec_size {frames}x{bins} with {p}x{p} patches "
                           f"needs {(frames // p) * (bins // p)}")
    heads = int(cfg.get("num_heads") or max(1, d // 64))
    size = next((k for k, v in PRESETS.items() if v == {"embed_dim": d, "depth": depth, "num_heads": heads}),
                "custom")
    return dict(size=size, embed_dim=d, depth=depth, num_heads=heads, patch_size=p, num_mel_bins=bins,
                target_frames=frames, mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / d,
                qkv_bias="blocks.0.attn.qkv.bias" in state, proj_bias="blocks.0.attn.proj.bias" in state,
                patch_norm="patch_embed.norm.weight" in state, pre_norm="norm_pre.weight" in state,
                positions="learned")


def _semantics(cls: str, state: dict, cfg: dict, pooling: str | None, what: str) -> dict:
    """Norm and pooling semantics of each released class."""
    ref_pool = pooling or cfg.get("pooling") or ("avg" if cls != "AudioMosaicLlamaForCausalLM" else "avg")
    if ref_pool not in ("avg", "cls"):
        raise ReleaseError(f"{what}: pooling {ref_pool!r} is not supported (avg or cls)")
    pool = "all" if ref_pool == "avg" else "cls"  # the reference's avg averages the CLS token with the patches
    if cls in ("AudioMosaicPretrain", "AudioMosaicTransformer"):
        if "fc_norm.weight" in state:  # use_fc_norm: tokens un-normalised, fc_norm on the pooled feature only
            return dict(pooling=pool, token_norm=False, pool_normed=False, fc_norm=True)
        return dict(pooling=pool, token_norm="norm.weight" in state, pool_normed=True, fc_norm=False)
    if cls == "AudioMosaicClassifier":  # no final norm; fc_norm on the pooled feature, then head
        return dict(pooling=pool, token_norm=False, pool_normed=False, fc_norm=True)
    if cls == "AudioMosaicLlamaForCausalLM":  # the LTU encoder's `norm` (the pretrain model's fc_norm) on tokens
        return dict(pooling=pool, token_norm=True, pool_normed=True, fc_norm=False)
    return dict(pooling=pool, token_norm=False, pool_normed=False, fc_norm=False)  # probes: norm is Identity


def _head(cls: str, state: dict, cfg: dict, multi_label: bool | None, probe_layer: int | None) -> HeadConfig | None:
    if cls not in ("AudioMosaicClassifier", "AudioMosaicLayerProbe", "AudioMosaicWeightedSumProbe",
                   "AudioMosaicAttentiveProbe"):
        return None
    n = state["head.weight"].shape[0]
    kind = {"AudioMosaicClassifier": "linear", "AudioMosaicLayerProbe": "layer",
            "AudioMosaicWeightedSumProbe": "weighted_sum", "AudioMosaicAttentiveProbe": "attentive"}[cls]
    heads = state["attn_query"].shape[1] if kind == "attentive" else 1
    layer = int(probe_layer if probe_layer is not None else cfg.get("probe_layer", 11))
    return HeadConfig(kind=kind, num_labels=n, layer=layer, attn_heads=heads,
                      multi_label=(n == 527) if multi_label is None else multi_label)


def _rename(cls: str, key: str, enc: dict) -> str | None:
    """Reference key -> kit key (None: deliberately dropped)."""
    if _DROPPED.match(key):
        return None
    if key == "patch_embed.proj.weight" or key == "patch_embed.proj.bias":
        return "encoder.patch_embed." + key.rsplit(".", 1)[1]
    if key.startswith("patch_embed.norm."):
        return "encoder.patch_norm." + key.rsplit(".", 1)[1]
    if key == "pos_embed":
        return "encoder.pos_table"
    if key.startswith("blocks."):
        return "encoder." + key.replace(".mlp.fc1.", ".mlp.0.").replace(".mlp.fc2.", ".mlp.2.")
    if key == "cls_token" or key.startswith(("norm_pre.", "norm.")):
        return "encoder." + key
    if key.startswith("fc_norm."):
        return ("encoder.fc_norm." if enc["fc_norm"] else "head.norm.") + key.split(".", 1)[1]
    if key.startswith("head."):
        return "head.linear." + key.split(".", 1)[1]
    if key.startswith(("layer_norms.", "attn_key.", "attn_value.")) or key in ("attn_query", "layer_weights"):
        return "head." + key
    if key.startswith("projector."):
        i, rest = key.split(".", 2)[1:]
        return "projector." + {"0": "fc1", "1": "bn1", "3": "fc2", "4": "bn2"}[i] + "." + rest
    return key


def convert(rel: dict, *, pooling: str | None = None, multi_label: bool | None = None, keep_projector: bool = False,
            probe_layer: int | None = None, num_heads: int | None = None, target_frames: int | None = None,
            preset: str | None = None, model_class: str | None = None) -> dict:
    """A read release -> ``{"encoder": EncoderConfig, "head": HeadConfig | None, "state": kit tensors,
    "projector": projector config | None, "audio_projector": LTU projection tensors | None, "labels", ...}``."""
    state, cfg, what = dict(rel["state"]), dict(rel["config"]), rel["source"]
    cls = rel["model_class"] or model_class or infer_class(state)
    if model_class and rel["model_class"] and model_class != rel["model_class"]:
        raise ReleaseError(f"{what}: its config names {rel['model_class']}, not {model_class}")
    if cls not in SUPPORTED and cls not in REFUSED:
        raise ReleaseError(f"{what}: model_class {cls!r} is not an AudioMosaic class the kit imports "
                           f"({', '.join(SUPPORTED)})")
    if model_class and model_class != infer_class(state) and {model_class, infer_class(state)} != \
            {"AudioMosaicClassifier", "AudioMosaicLayerProbe"}:
        raise ReleaseError(f"{what}: its tensors are those of a {infer_class(state)}, not a {model_class}")
    if cls in REFUSED:
        raise ReleaseError(f"{what}: {cls}: {REFUSED[cls]}")
    audio_proj = None
    if cls == "AudioMosaicLlamaForCausalLM":
        audio_proj = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("audio_proj.")}
        state = {k[len("audio_encoder."):]: v for k, v in state.items() if k.startswith("audio_encoder.")}
        if not {"weight", "bias"} <= set(audio_proj):
            raise ReleaseError(f"{what}: the LTU audio projection (audio_proj.1.weight / .bias) is missing")
        cfg.setdefault("spec_size", [1024, 128])
    if num_heads:
        cfg["num_heads"] = num_heads
    arch = _arch(state, cfg, what)
    sem = _semantics(cls, state, cfg, pooling, what)
    pre = dict(rel.get("preprocessing") or {})
    name = preset or _PRESET_BY_FRAMES.get(int(pre.get("target_length") or arch["target_frames"]))
    base = PREPROCESSING.get(name or "", PREPROCESSING["audioset"])
    if float(pre.get("frame_shift", 10.0)) != 10.0 or int(pre.get("num_mel_bins", arch["num_mel_bins"])) != \
            arch["num_mel_bins"]:
        raise ReleaseError(f"{what}: audio_preprocessing {pre} differs from the kit's fbank (10 ms shift, "
                           f"{arch['num_mel_bins']} bins)")
    mean = float(pre.get("norm_mean", base["norm_mean"]))
    std = float(pre.get("norm_std", base["norm_std"]))
    if int(pre.get("sample_rate", 16000)) != 16000:
        raise ReleaseError(f"{what}: sample_rate {pre['sample_rate']} (the kit's fbank is 16 kHz)")
    trained_frames = arch["target_frames"]
    arch["target_frames"] = int(target_frames or trained_frames)
    try:
        enc = EncoderConfig(**arch, **sem, norm_mean=mean, norm_std=std)
    except ValueError as exc:
        raise ReleaseError(f"{what}: {exc}") from None
    head = _head(cls, state, cfg, multi_label, probe_layer)
    if head is not None and head.kind == "layer" and not -enc.depth <= head.layer < enc.depth:
        raise ReleaseError(f"{what}: probe_layer {head.layer} out of range for {enc.depth} blocks")
    if not keep_projector:
        state = {k: v for k, v in state.items() if not k.startswith("projector.")}
    out, dropped = {}, []
    for k, v in state.items():
        new = _rename(cls, k, asdict(enc))
        if new is None:
            dropped.append(k)
        else:
            out[new] = v.detach().to(torch.float32) if v.is_floating_point() else v
    if enc.target_frames != trained_frames:  # the reference loaders' resize of the learned table
        out["encoder.pos_table"] = resize_learned_positions(out["encoder.pos_table"], *enc.grid())
    projector = None
    if keep_projector and "projector.fc1.weight" in out:
        projector = {"hidden_dim": out["projector.fc1.weight"].shape[0],
                     "out_dim": out["projector.fc2.weight"].shape[0], "batch_norm": True,
                     "out_affine": "projector.bn2.weight" in out}
    labels = label_names(head.num_labels) if head else None
    if head and cfg.get("id2label"):
        labels = [cfg["id2label"][str(i)] for i in range(head.num_labels)]
    return {"model_class": cls, "encoder": enc, "head": head, "state": out, "projector": projector,
            "audio_projector": audio_proj, "labels": labels, "dropped": dropped, "trained_frames": trained_frames,
            "preset": name, "source": rel["source"], "repo": rel["repo"]}


__all__ = ["ReleaseError", "RELEASES", "PREPROCESSING", "SUPPORTED", "REFUSED", "read_release", "convert",
           "is_release", "label_names", "strip_prefixes", "infer_class", "download"]
