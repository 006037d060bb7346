"""One artifact per stage: everything needed to rebuild the ALM, loadable in one call (:func:`load_alm`).

Layout (written to a temporary sibling folder, then renamed into place)::

    artifact/
      alm_config.yaml         the run config (model sections, data, train, seed, stage; checked, defaults filled in)
      projector.safetensors   feature statistics + LayerNorm + Linear (absent for the no-audio baseline)
      adapter/                peft LoRA adapter (adapter_config.json + adapter_model.safetensors), if LoRA is on
      encoder/                the AudioMosaic encoder used (an encoder folder with its own card), if audio is on
      meta.json               stage, seed, versions, parameter counts, time, the encoder's preprocessing constants
      config.json             ``ALMArtifactConfig`` (model_type mosaic-alm): AutoConfig / AutoModel load the folder
                              once :func:`register_alm_auto_classes` ran (loading or saving an artifact runs it)
      README.md               the model card (components, preprocessing, training, measured results, use, limits)

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
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from encoder.checkpoint import CheckpointError, require_safetensors
from encoder.hf import (
    preprocessing_constants,
    preprocessing_facts,
    resolve_encoder,
    save_encoder_folder,
)
from mosaic_core.cards import facts_list, write_model_card
from mosaic_core.config import ConfigError, read_yaml, save_yaml
from mosaic_core.io import atomic_replace_dir
from mosaic_core.runtime import rank_world

from .audio_lm import ALMArtifactConfig, AudioLanguageModel, alm_config_from_dict
from .llm import DEFAULT_LLM, load_llm

CONFIG_NAME = "alm_config.yaml"


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
    register_alm_auto_classes()
    path = Path(path)
    proj = module_state(model.projector) if model.projector is not None else None
    lora = None
    if model.cfg.lora.enabled:
        lora = module_state(model.llm, only=lambda n: "lora_" in n)
    enc = module_state(model.encoder) if model.encoder is not None else None
    if rank_world()[0] != 0:
        return path
    import peft
    import transformers

    pre = preprocessing_constants(model.encoder.config, model.cfg.audio.target_frames) if enc is not None else None
    info = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "n_audio_tokens": model.n_audio_tokens, "parameters": model.parameter_counts(), "preprocessing": pre}
    info.update(meta or {})
    sections = {k: run_cfg[k] for k in ("llm", "lora", "audio", "projector", "trainable", "prompt") if k in run_cfg}

    def fill(tmp: Path) -> None:
        save_yaml(run_cfg, tmp / CONFIG_NAME)
        if proj is not None:
            save_file(proj, str(tmp / "projector.safetensors"), metadata={"format": "pt"})
        if lora is not None:
            model.llm.save_pretrained(str(tmp / "adapter"), state_dict=lora, safe_serialization=True)
        if enc is not None:
            role = "trained with the ALM" if model.cfg.trainable.encoder else "frozen inside the ALM"
            save_encoder_folder(model.encoder, tmp / "encoder", state_dict=enc, training={
                "source": model.cfg.audio.encoder + (" (its own card has the pretraining facts)" if (
                    Path(model.cfg.audio.encoder) / "README.md").is_file() else ""),
                "in this artifact": f"{role}, stage {info.get('stage')}"}, shown=str(path / "encoder"))
        (tmp / "meta.json").write_text(json.dumps(info, indent=2, default=str))
        ALMArtifactConfig(alm=json.loads(json.dumps(sections, default=str)), preprocessing=pre,
                          n_audio_tokens=model.n_audio_tokens).save_pretrained(str(tmp))
        write_alm_card(tmp, model, run_cfg, info, shown=str(path))

    atomic_replace_dir(path, fill)
    return path


SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the packaged GGUF of the default LLM is


def write_alm_card(folder: str | os.PathLike, model: AudioLanguageModel, run_cfg: dict, info: dict,
                   shown: str | None = None) -> Path:
    """The artifact's README.md model card: components, preprocessing, training, use, limits (results are added
    later with :func:`mosaic_core.cards.add_card_results`); ``shown``: the artifact's path in the examples."""
    cfg, enc = model.cfg, model.encoder
    summ = info.get("train_summary") or {}
    data, train = run_cfg.get("data") or {}, run_cfg.get("train") or {}
    llm = f"{cfg.llm.name_or_path}" + (f" = {SMOLLM2_HUB_ID} (packaged Q4_1 GGUF, de-quantised)"
                                       if cfg.llm.name_or_path == DEFAULT_LLM else "")
    counts = info.get("parameters") or {}
    parts = {
        "audio encoder": (f"AudioMosaic {enc.config.size} ({enc.config.embed_dim}-d, depth {enc.config.depth}) from "
                          f"{cfg.audio.encoder}, {'trained' if cfg.trainable.encoder else 'frozen'}; copy in encoder/"
                          if enc is not None else "none (the no-audio baseline: the LLM sees the text only)"),
        "projector": (f"mean over frequency, average-pool time by {cfg.projector.pool}, per-feature standardisation "
                      f"({'on' if cfg.projector.standardize else 'off'}), LayerNorm + Linear into the LLM's "
                      "embedding space" if enc is not None else None),
        "audio tokens": (f"{model.n_audio_tokens} per clip, spliced at the {cfg.audio.placeholder!r} slot "
                         f"({cfg.audio.position})" if enc is not None else None),
        "LLM": f"{llm}, {cfg.llm.dtype}, quantization {cfg.llm.quantization} (frozen; referenced, not copied)",
        "LoRA": (f"r={cfg.lora.r}, alpha={cfg.lora.alpha}, dropout {cfg.lora.dropout}, on "
                 f"{', '.join(cfg.lora.target_modules)} (adapter/)" if cfg.lora.enabled else "none"),
        "parameters": ", ".join(f"{k} {v['trainable']:,} trainable / {v['total']:,}" for k, v in counts.items()),
    }
    training = {
        "stage": info.get("stage"), "started from": train.get("init_from") or "scratch (new projector / adapter)",
        "instruction data": f"{data.get('root')}: split {data.get('train_split', 'train')}, {data.get('kind')} "
                            f"questions, tasks {data.get('tasks') or 'all'}, "
                            f"question types {data.get('qtypes') or 'all'}"
                            if data else None,
        "records": summ.get("train_records"), "optimizer steps": summ.get("steps"),
        "batch": f"{train.get('batch_size')} x {train.get('grad_accum', 1)} accumulation" if train else None,
        "learning rate": train.get("lr"), "seed": info.get("seed", run_cfg.get("seed")),
        "train loss": f"{summ['first_loss']:.3f} -> {summ['last_loss']:.3f}" if "first_loss" in summ else None,
        "held-out loss": f"{summ['eval_loss']:.3f}" if summ.get("eval_loss") is not None else None,
        "train time": f"{summ['train_seconds']} s" if "train_seconds" in summ else None,
        "saved": info.get("created"), "versions": f"torch {info.get('torch')}, transformers "
                                                  f"{info.get('transformers')}, peft {info.get('peft')}"}
    pre = info.get("preprocessing")
    name = shown or str(folder)
    usage = f"""```bash
mosaic-alm ask --artifact {name} --audio clip.wav --question "What do you hear?"
mosaic-alm caption --artifact {name} --audio clip.wav
```
```python
from transformers import AutoModel
from mosaic_alm.artifact import register_alm_auto_classes
from mosaic_alm.generation import ask

register_alm_auto_classes()  # model_type mosaic-alm for transformers' AutoConfig / AutoModel
alm = AutoModel.from_pretrained("{name}")   # = mosaic_alm.artifact.load_alm("{name}"); no trust_remote_code
print(ask(alm, "clip.wav", "What do you hear?"))
```"""
    limits = ("A research artifact: it answers short questions about, and captions, one clip of "
              f"{pre['target_frames'] * pre['frame_shift_ms'] / 1000:g} s (longer audio is cropped) " if pre else
              "A research artifact (text only: the no-audio baseline) ")
    limits += ("with the vocabulary of its instruction data. A model trained on the kit's embedded benchmark knows "
               "that benchmark's words, instruments and sound events and little else; answers outside it are "
               "guesses, captions are template-like, and a small LLM can state wrong things fluently. Not evaluated "
               "for fairness, speech privacy or safety-critical use; check the Measured results before relying on "
               "it.")
    meta = {"library_name": "mosaic-alm", "license": "apache-2.0", "pipeline_tag": "audio-text-to-text",
            "tags": ["audio", "audio-language-model", "mosaic-alm"] + (["lora"] if cfg.lora.enabled else []),
            **({"base_model": SMOLLM2_HUB_ID} if cfg.llm.name_or_path == DEFAULT_LLM else {})}
    stage = f", stage {info['stage']}" if info.get("stage") is not None else ""
    return write_model_card(
        folder, title=f"mosaic-alm audio-language model ({run_cfg.get('name', 'alm')}{stage})",
        summary="An audio-language model assembled by mosaic-alm: an AudioMosaic audio encoder, a projector that turns "
                "its tokens into LLM input embeddings, and a Hugging Face causal LM with a LoRA adapter. It answers "
                "questions about a clip and captions it." if enc is not None else
                "The no-audio baseline of mosaic-alm: the same LLM and adapter trained on the same questions without "
                "the audio.",
        sections={"Components": facts_list(parts),
                  "Preprocessing": facts_list(preprocessing_facts(pre)) if pre else "None: no audio input.",
                  "Training": facts_list(training), "Use": usage, "Intended use and limits": limits}, metadata=meta)


def _check_preprocessing(art: Path, cfg) -> None:
    """The artifact's encoder must turn audio into features exactly as when the ALM was trained (checked from the
    configs, before anything loads)."""
    from encoder.hf import AudioMosaicConfig

    meta = art / "meta.json"
    recorded = json.loads(meta.read_text()).get("preprocessing") if meta.is_file() else None
    if not recorded or not (art / "encoder" / "config.json").is_file():  # from before the constants were recorded
        return
    now = preprocessing_constants(AudioMosaicConfig.from_pretrained(str(art / "encoder")), cfg.audio.target_frames)
    diff = [f"{k} {now.get(k)!r} (encoder/config.json) vs {v!r} (trained)" for k, v in recorded.items()
            if now.get(k) != v]
    if diff:
        raise ConfigError(f"ALM artifact {art}: its encoder's preprocessing does not match what the ALM was trained "
                          f"with: {'; '.join(diff)}")


def _check_encoder_swap(art: Path, cfg, prev) -> None:
    """A stage continuing from an artifact keeps the artifact's encoder; an ``audio.encoder`` folder other than the
    one the artifact was trained with must at least preprocess audio the same way (else: ConfigError)."""
    folder = Path(cfg.audio.encoder).expanduser()
    if cfg.audio.encoder == prev.audio.encoder or not (folder / "config.json").is_file() \
            or not (art / "encoder" / "config.json").is_file():
        return
    from encoder.hf import AudioMosaicConfig

    want, got = (preprocessing_constants(AudioMosaicConfig.from_pretrained(str(f)), cfg.audio.target_frames)
                 for f in (art / "encoder", folder))
    diff = [f"{k} {got[k]!r} vs {v!r}" for k, v in want.items() if got.get(k) != v]
    if diff:
        raise ConfigError(f"audio.encoder {cfg.audio.encoder}: its preprocessing does not match the encoder of the "
                          f"artifact {art} this stage continues from: {'; '.join(diff)}")
    logging.getLogger(__name__).warning("audio.encoder %s differs from the artifact's; the artifact's encoder "
                                        "(%s) is used", cfg.audio.encoder, art / "encoder")


def build_from(cfg_dict: dict, init_from: str | os.PathLike | None = None, device="cpu",
               llm_and_tokenizer=None) -> AudioLanguageModel:
    """Build the ALM from a resolved config; with ``init_from`` (an artifact), start from its weights.

    From an artifact: the encoder comes from ``artifact/encoder``, the projector from ``projector.safetensors`` and,
    if there is one, the LoRA adapter from ``artifact/adapter`` (loaded trainable; it then decides the LoRA shape).
    A stage that enables LoRA on an artifact without one gets a fresh adapter from ``lora:``.
    """
    from peft import PeftModel

    cfg = alm_config_from_dict(cfg_dict)
    art = check_artifact(init_from) if init_from else None
    if art is not None:
        prev = alm_config_from_dict(read_yaml(art / CONFIG_NAME))
        for key in ("enabled", "target_frames", "position"):
            if getattr(prev.audio, key) != getattr(cfg.audio, key):
                raise ConfigError(f"audio.{key} is {getattr(cfg.audio, key)!r} here but {getattr(prev.audio, key)!r} "
                                  f"in the artifact {art}")
        if prev.llm.name_or_path != cfg.llm.name_or_path:
            raise ConfigError(f"llm.name_or_path {cfg.llm.name_or_path!r} differs from the artifact's "
                              f"{prev.llm.name_or_path!r}")
    if art is not None:
        if cfg.audio.enabled:
            require_safetensors(art / "projector.safetensors", f"ALM artifact {art}")
            _check_preprocessing(art, cfg)
            _check_encoder_swap(art, cfg, prev)
        if (art / "adapter").is_dir():
            require_safetensors(art / "adapter" / "adapter_model.safetensors", f"ALM artifact {art}")
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
        try:
            missing, unexpected = model.projector.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch: the projector was trained for another encoder / LLM
            raise CheckpointError(f"{art / 'projector.safetensors'}: does not fit this encoder and LLM "
                                  f"({str(exc).splitlines()[-1].strip()})") from None
        if unexpected or set(missing) - set(model.projector.STATS_KEYS):
            raise CheckpointError(f"{art / 'projector.safetensors'}: does not match the projector (missing "
                                  f"{missing}, unexpected {unexpected})")
        if missing and model.cfg.projector.standardize:  # an artifact from before feature statistics existed
            logging.getLogger(__name__).warning("%s has no projector feature statistics; standardisation is the "
                                                "identity", art)
    return model


def check_artifact(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is an ALM artifact folder (holds ``alm_config.yaml``), else FileNotFoundError."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{path}: not an ALM artifact (no {CONFIG_NAME})")
    return path


def load_alm(path: str | os.PathLike, device="cpu") -> AudioLanguageModel:
    """Load a stage artifact in one call: encoder, projector, LLM + adapter; eval mode, nothing trainable."""
    register_alm_auto_classes()
    path = check_artifact(path)
    cfg = read_yaml(path / CONFIG_NAME)
    model = build_from(cfg, init_from=path, device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    model.run_config = cfg
    return model.eval()


class ALMAutoLoader(AudioLanguageModel):
    """What transformers' ``AutoModel`` holds for ``model_type: mosaic-alm``: ``AutoModel.from_pretrained(artifact)``
    is :func:`load_alm` (the LLM is a separate Hugging Face model with a peft adapter), which returns a plain
    :class:`~mosaic_alm.audio_lm.AudioLanguageModel`."""

    @classmethod
    def from_pretrained(cls, path, *_, device="cpu", **__) -> AudioLanguageModel:
        return load_alm(path, device)


def register_alm_auto_classes() -> None:
    """Register ``model_type: mosaic-alm`` with transformers' ``AutoConfig`` / ``AutoModel`` (idempotent)."""
    AutoConfig.register(ALMArtifactConfig.model_type, ALMArtifactConfig, exist_ok=True)
    AutoModel.register(ALMArtifactConfig, ALMAutoLoader, exist_ok=True)


__all__ = ["ALMAutoLoader", "CONFIG_NAME", "build_from", "check_artifact", "gathered", "load_alm", "module_state",
           "register_alm_auto_classes", "save_artifact", "write_alm_card"]
