"""Inference: ``ask(model, audios, questions)``, ``caption(model, audios)``, option log-likelihood scoring.

Batched greedy generation with LEFT padding (explicit position ids, so a padded row generates exactly what it would
alone). Requests are sorted by prompt length before batching to waste little padding, and answers come back in the
caller's order. Audio becomes tensors through the model's :class:`~mosaic_alm.featurizer.AudioFeaturizer`, which
caches frozen-encoder tokens per clip file (a clip asked several questions is encoded once).

The command-line front ends (``mosaic-alm ask`` / ``caption``) are the recipe ``recipes/infer.py``.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from mosaic_core.progress import progress_bar
from mosaic_core.runtime import autocast, use_bf16

from .data import IGNORE, PromptFormatter, collate
from .featurizer import AudioFeaturizer

CAPTION_PROMPT = "Write a short caption for this audio."


def _as_list(x, n=None):
    if isinstance(x, (str, os.PathLike)) or (hasattr(x, "ndim") and getattr(x, "ndim", 0) == 1):
        x = [x]
    x = list(x)
    if n is not None and len(x) == 1 and n > 1:
        x = x * n
    return x


def inference_autocast(model):
    """bf16 autocast for the LLM where :func:`mosaic_core.runtime.use_bf16` says ``auto`` means bf16 (native bf16
    CPUs, GPUs); ``MOSAIC_ALM_PRECISION=fp32`` keeps fp32."""
    return autocast(use_bf16("auto", model.device), model.device)


@torch.no_grad()
def generate_answers(model, audios: Sequence, questions: Sequence[str], batch_size: int = 8,
                     max_new_tokens: int = 32, sort_by_length: bool = True) -> list[str]:
    """Greedy answers for (audio, question) pairs; ``audios`` entries may be None for a no-audio model."""
    if len(audios) != len(questions):
        raise ValueError(f"{len(audios)} audios but {len(questions)} questions")
    model.eval()
    fmt = PromptFormatter.for_model(model)
    feats = AudioFeaturizer.for_model(model)
    items = [dict(fmt.encode(q), audio=a, index=i) for i, (a, q) in enumerate(zip(audios, questions))]
    order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"])) if sort_by_length else \
        list(range(len(items)))
    answers: list[str | None] = [None] * len(items)
    pad = model.tokenizer.pad_token_id
    if feats is not None:
        feats.precompute([a for a in audios if a is not None])  # clips not yet cached, in one batched pass
    bar = progress_bar(total=len(order), desc="generating", unit="answer", disable=len(order) <= 4 * batch_size)
    for s in range(0, len(order), batch_size):
        chunk = [items[i] for i in order[s:s + batch_size]]
        b = collate(chunk, pad, "left")
        audio = feats.inputs(b["audios"]) if feats is not None else {}
        with inference_autocast(model):
            out = model.generate(b["input_ids"], b["attention_mask"], b["audio_mask"],
                                 max_new_tokens=max_new_tokens, **audio)
        for row, item in zip(out, chunk):
            answers[item["index"]] = model.tokenizer.decode(row, skip_special_tokens=True).strip()
        bar.update(len(chunk))
    bar.close()
    return answers  # type: ignore[return-value]


def ask(model, audio, question, batch_size: int = 8, max_new_tokens: int = 32):
    """Answer ``question`` about ``audio``. One path/waveform + one question -> a str; lists -> a list (a single
    question is asked of every clip; a single clip gets every question)."""
    one_clip = isinstance(audio, (str, os.PathLike)) or getattr(audio, "ndim", 0) == 1
    single = one_clip and isinstance(question, str)
    qs = [question] if isinstance(question, str) else list(question)
    auds = _as_list(audio)
    if len(auds) == 1 and len(qs) > 1:
        auds = auds * len(qs)
    if len(qs) == 1 and len(auds) > 1:
        qs = qs * len(auds)
    out = generate_answers(model, auds, qs, batch_size, max_new_tokens)
    return out[0] if single else out


def caption(model, audio, prompt: str = CAPTION_PROMPT, batch_size: int = 8, max_new_tokens: int = 48):
    """Caption one clip (-> str) or several (-> list of str)."""
    return ask(model, audio, prompt, batch_size, max_new_tokens)


@torch.no_grad()
def option_loglik(model, audios: Sequence, questions: Sequence[str], options: Sequence[Sequence[str]],
                  return_scores: bool = False):
    """For each question, the index of the option whose answer tokens (as the chat template renders the assistant
    turn, end-of-turn included) have the highest total log-likelihood.

    The prompt (with its audio) runs once per question with a KV cache; the cache is repeated for the options, which
    then run as one small batch -- the cost is one prompt pass per question instead of one per option.
    """
    model.eval()
    fmt = PromptFormatter(model.tokenizer, model.n_audio_tokens, model.cfg.audio.enabled, model.cfg.audio.position,
                          model.cfg.audio.placeholder, model.cfg.prompt.system, "answer")
    pad = model.tokenizer.pad_token_id
    dev = model.device
    feats = AudioFeaturizer.for_model(model)
    best, all_scores = [], []
    if feats is not None:
        feats.precompute([a for a in audios if a is not None])
    for a, q, opts in progress_bar(list(zip(audios, questions, options)), desc="scoring options", unit="question",
                                   disable=len(questions) <= 32):
        if not opts:
            raise ValueError(f"question {q!r} has no options to score")
        enc = fmt.encode(q)
        ids = torch.tensor([enc["input_ids"]])
        with inference_autocast(model):
            emb = model.embed(ids, torch.tensor([enc["audio_mask"]]).bool(), **(feats.inputs([a]) if feats else {}))
            out = model.llm(inputs_embeds=emb, attention_mask=torch.ones_like(ids, device=dev), use_cache=True)
        n_prompt = ids.shape[1]
        first = torch.log_softmax(out.logits[:, -1].float(), -1)  # [1, V]: predicts the first answer token
        answers = [fmt.encode(q, o)["input_ids"][n_prompt:] for o in opts]
        n = len(answers)
        width = max(len(x) for x in answers)
        tgt = torch.full((n, width), IGNORE)
        for i, x in enumerate(answers):
            tgt[i, :len(x)] = torch.tensor(x)
        scores = first[0, tgt[:, 0].clamp(min=0).to(dev)].clone()
        if width > 1:
            cache = out.cache  # transformers 5.x: `cache` (was past_key_values)
            cache.batch_repeat_interleave(n)
            feed = tgt[:, :-1].clamp(min=0).masked_fill(tgt[:, :-1] == IGNORE, pad).to(dev)
            mask = torch.cat([torch.ones(n, n_prompt, dtype=torch.long), (tgt[:, :-1] != IGNORE).long()], 1).to(dev)
            pos = (n_prompt + torch.arange(width - 1)).unsqueeze(0).expand(n, -1).to(dev)
            with inference_autocast(model):
                logits = model.llm(input_ids=feed, attention_mask=mask, position_ids=pos, cache=cache,
                                   use_cache=True).logits.float()
            lp = torch.log_softmax(logits, -1)
            t = tgt[:, 1:].to(dev)
            ok = t != IGNORE
            scores = scores + (lp.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1) * ok).sum(1)
        s = scores.tolist()
        all_scores.append(s)
        best.append(max(range(n), key=lambda i: s[i]))
    return (best, all_scores) if return_scores else best


__all__ = ["ask", "caption", "generate_answers", "option_loglik", "CAPTION_PROMPT"]
