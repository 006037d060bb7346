"""One artifact per stage: everything needed to rebuild the ALM, loadable in one call (:func:`load_alm`).

Layout (written to a temporary sibling folder, then renamed into place)::

    artifact/
      alm_config.yaml         the resolved run config (model sections, data, train, seed, stage)
      projector.safetensors   feature statistics + LayerNorm + Linear (absent for the no-audio baseline)
      adapter/                peft LoRA adapter (adapter_config.json + adapter_model.safetensors), if LoRA is on
      encoder/                the AudioMosaic encoder used (config.json + model.safetensors), if audio is on
      meta.json               stage, seed, versions, parameter counts, time

The base LLM is referenced by ``llm.name_or_path`` (it is frozen; only the adapter changes). The encoder is copied
so an artifact never depends on a pretraining run folder (and random-init baselines are reproducible exactly).

Saving is ZeRO-3 aware: parameters partitioned by DeepSpeed (they carry ``ds_id``) are gathered with
``deepspeed.zero.GatheredParameters`` on every rank, and only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import torch
from mosaic_core.config import ConfigError, read_yaml, save_yaml
from mosaic_core.io import atomic_replace_dir
from safetensors.torch import load_file, save_file

from .llm import load_llm
from encoder.hf import resolve_encoder

from .model import AudioLanguageModel, alm_config_from_dict

CONFIG_NAME = "alm_config.yaml"


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


@contextlib.contextmanager
def gathered(params):
    """Gather ZeRO-3 partitioned parameters (no-op for ordinary tensors)."""
    params = list(params)
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield
    else:
        yield


def module_state(module: torch.nn.Module, only=lambda name: True) -> dict[str, torch.Tensor]:
    named = [(n, p) for n, p in module.named_parameters() if only(n)]
    with gathered([p for _, p in named]):
        state = {n: p.detach().cpu().clone().contiguous() for n, p in named}
    for n, b in module.named_buffers():  # buffers are never partitioned
        if only(n) and b is not None:
            state[n] = b.detach().cpu().clone().contiguous()
    return state


def save_artifact(model: AudioLanguageModel, path: str | os.PathLike, run_cfg: dict, meta: dict | None = None) -> Path:
    """Write ``model`` as an artifact at ``path`` (atomically: temp folder + rename). Collective under ZeRO-3."""
    path = Path(path)
    proj = module_state(model.projector) if model.projector is not None else None
    lora = None
    if model.cfg.lora.enabled:
        lora = module_state(model.llm, only=lambda n: "lora_" in n)
    enc = module_state(model.encoder) if model.encoder is not None else None
    if _rank() != 0:
        return path
    import peft
    import transformers

    info = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "n_audio_tokens": model.n_audio_tokens, "parameters": model.parameter_counts()}
    info.update(meta or {})

    def fill(tmp: Path) -> None:
        save_yaml(run_cfg, tmp / CONFIG_NAME)
        if proj is not None:
            save_file(proj, str(tmp / "projector.safetensors"), metadata={"format": "pt"})
        if lora is not None:
            model.llm.save_pretrained(str(tmp / "adapter"), state_dict=lora, safe_serialization=True)
        if enc is not None:
            model.encoder.save_pretrained(str(tmp / "encoder"), state_dict=enc, safe_serialization=True)
        (tmp / "meta.json").write_text(json.dumps(info, indent=2, default=str))

    atomic_replace_dir(path, fill)
    return path


def build_from(cfg_dict: dict, init_from: str | os.PathLike | None = None, device="cpu",
               llm_and_tokenizer=None) -> AudioLanguageModel:
    """Build the ALM from a resolved config; with ``init_from`` (an artifact), start from its weights.

    From an artifact: the encoder comes from ``artifact/encoder``, the projector from ``projector.safetensors`` and,
    if there is one, the LoRA adapter from ``artifact/adapter`` (loaded trainable; it then decides the LoRA shape).
    A stage that enables LoRA on an artifact without one gets a fresh adapter from ``lora:``.
    """
    from peft import PeftModel

    cfg = alm_config_from_dict(cfg_dict)
    art = Path(init_from) if init_from else None
    if art is not None and not (art / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{art}: not an ALM artifact (no {CONFIG_NAME})")
    if art is not None:
        prev = alm_config_from_dict(read_yaml(art / CONFIG_NAME))
        for key in ("enabled", "target_frames", "position"):
            if getattr(prev.audio, key) != getattr(cfg.audio, key):
                raise ConfigError(f"audio.{key} is {getattr(cfg.audio, key)!r} here but {getattr(prev.audio, key)!r} "
                                  f"in the artifact {art}")
        if prev.llm.name_or_path != cfg.llm.name_or_path:
            raise ConfigError(f"llm.name_or_path {cfg.llm.name_or_path!r} differs from the artifact's "
                              f"{prev.llm.name_or_path!r}")
    llm, tok = llm_and_tokenizer or load_llm(cfg.llm, device)
    if art is not None and (art / "adapter" / "adapter_config.json").is_file():
        llm = PeftModel.from_pretrained(llm, str(art / "adapter"), is_trainable=True)
        ac = llm.peft_config["default"]
        cfg.lora.enabled = True
        cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = ac.r, ac.lora_alpha, ac.lora_dropout
        cfg.lora.target_modules = sorted(ac.target_modules)
    elif cfg.lora.enabled:
        from .llm import add_lora

        llm = add_lora(llm, cfg.lora)
    encoder = None
    if cfg.audio.enabled:
        if art is not None and (art / "encoder" / "config.json").is_file():
            encoder = resolve_encoder(str(art / "encoder"))
        else:
            encoder = resolve_encoder(cfg.audio.encoder)
        encoder.to(device)
    model = AudioLanguageModel(cfg, llm, tok, encoder)
    if art is not None and model.projector is not None:
        state = load_file(str(art / "projector.safetensors"))
        missing, unexpected = model.projector.load_state_dict(state, strict=False)
        if unexpected or set(missing) - set(model.projector.STATS_KEYS):
            raise RuntimeError(f"{art / 'projector.safetensors'}: does not match the projector (missing {missing}, "
                               f"unexpected {unexpected})")
        if missing and model.cfg.projector.standardize:  # an artifact from before feature statistics existed
            logging.getLogger(__name__).warning("%s has no projector feature statistics; standardisation is the "
                                                "identity", art)
    return model


def load_alm(path: str | os.PathLike, device="cpu") -> AudioLanguageModel:
    """Load a stage artifact in one call: encoder, projector, LLM + adapter; eval mode, nothing trainable."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{path}: not an ALM artifact (no {CONFIG_NAME})")
    cfg = read_yaml(path / CONFIG_NAME)
    model = build_from(cfg, init_from=path, device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    model.run_config = cfg
    return model.eval()


__all__ = ["save_artifact", "load_alm", "build_from", "module_state", "gathered", "CONFIG_NAME"]
