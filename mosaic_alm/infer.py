"""Inference: ``ask(model, audios, questions)``, ``caption(model, audios)``, option log-likelihood scoring.

Batched greedy generation with LEFT padding (explicit position ids, so a padded row generates exactly what it would
alone). Requests are sorted by prompt length before batching to waste little padding, and answers come back in the
caller's order. Encoder features are cached per clip file by the model (a clip asked several questions is encoded
once).

CLI::

    mosaic-alm ask --artifact runs/alm/x/stage4/artifact --audio a.wav [b.wav ...] --question "Which word is spoken?"
    mosaic-alm caption --artifact runs/alm/x/stage4/artifact --audio a.wav [b.wav ...]
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import torch

from .data import IGNORE, PromptFormatter, collate

CAPTION_PROMPT = "Write a short caption for this audio."


def _as_list(x, n=None):
    if isinstance(x, (str, os.PathLike)) or (hasattr(x, "ndim") and getattr(x, "ndim", 0) == 1):
        x = [x]
    x = list(x)
    if n is not None and len(x) == 1 and n > 1:
        x = x * n
    return x


@torch.no_grad()
def generate_answers(model, audios: Sequence, questions: Sequence[str], batch_size: int = 8,
                     max_new_tokens: int = 32, sort_by_length: bool = True) -> list[str]:
    """Greedy answers for (audio, question) pairs; ``audios`` entries may be None for a no-audio model."""
    if len(audios) != len(questions):
        raise ValueError(f"{len(audios)} audios but {len(questions)} questions")
    model.eval()
    fmt = PromptFormatter.for_model(model)
    items = [dict(fmt.encode(q), audio=a, index=i) for i, (a, q) in enumerate(zip(audios, questions))]
    order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"])) if sort_by_length else \
        list(range(len(items)))
    answers: list[str | None] = [None] * len(items)
    pad = model.tokenizer.pad_token_id
    for s in range(0, len(order), batch_size):
        chunk = [items[i] for i in order[s:s + batch_size]]
        b = collate(chunk, pad, "left")
        out = model.generate(b["input_ids"], b["attention_mask"], b["audio_mask"],
                             audios=b["audios"] if model.cfg.audio.enabled else None, max_new_tokens=max_new_tokens)
        for row, item in zip(out, chunk):
            answers[item["index"]] = model.tokenizer.decode(row, skip_special_tokens=True).strip()
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
    best, all_scores = [], []
    for a, q, opts in zip(audios, questions, options):
        if not opts:
            raise ValueError(f"question {q!r} has no options to score")
        enc = fmt.encode(q)
        ids = torch.tensor([enc["input_ids"]])
        emb = model.embed(ids, torch.tensor([enc["audio_mask"]]).bool(),
                          [a] if model.cfg.audio.enabled else None)
        n_prompt = ids.shape[1]
        out = model.llm(inputs_embeds=emb, attention_mask=torch.ones_like(ids, device=dev), use_cache=True)
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


def _common_args(ap: argparse.ArgumentParser):
    ap.add_argument("--artifact", required=True, help="a stage artifact folder (mosaic-alm train-alm writes one)")
    ap.add_argument("--audio", nargs="+", required=True, help="audio file(s)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="print JSON lines {audio, question, answer}")


def _print(audios, questions, answers, as_json):
    for a, q, ans in zip(audios, questions, answers):
        if as_json:
            print(json.dumps({"audio": str(a), "question": q, "answer": ans}, ensure_ascii=False))
        elif len(audios) == 1:
            print(ans)
        else:
            print(f"{a}\t{ans}")


def main_ask(argv: Sequence[str] | None = None) -> int:
    from .artifact import load_alm

    ap = argparse.ArgumentParser(prog="mosaic-alm ask", description="answer a question about audio file(s)")
    _common_args(ap)
    ap.add_argument("--question", "-q", required=True)
    args = ap.parse_args(argv)
    model = load_alm(args.artifact, args.device)
    answers = ask(model, list(args.audio), args.question, args.batch_size, args.max_new_tokens or 32)
    answers = answers if isinstance(answers, list) else [answers]
    _print(args.audio, [args.question] * len(args.audio), answers, args.json)
    return 0


def main_caption(argv: Sequence[str] | None = None) -> int:
    from .artifact import load_alm

    ap = argparse.ArgumentParser(prog="mosaic-alm caption", description="caption audio file(s)")
    _common_args(ap)
    ap.add_argument("--prompt", default=CAPTION_PROMPT)
    args = ap.parse_args(argv)
    model = load_alm(args.artifact, args.device)
    caps = caption(model, list(args.audio), args.prompt, args.batch_size, args.max_new_tokens or 48)
    caps = caps if isinstance(caps, list) else [caps]
    _print(args.audio, [args.prompt] * len(args.audio), caps, args.json)
    return 0


__all__ = ["ask", "caption", "generate_answers", "option_loglik", "main_ask", "main_caption", "CAPTION_PROMPT"]
