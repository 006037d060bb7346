"""Teaching the LLM to read its audio slots: projector alignment and the copy warm-up.

Why: with a frozen encoder and a LoRA-tuned LLM, a closed-QA stage of ~1,000 examples learns the binary question
types (pitch, loudness, gender) but leaves the 16-20-way ones (keyword, instrument, sound event) at chance, although
an attentive probe on the same frozen tokens reads keywords at 0.89 (``results/alm_recipe_probe/``). Two things are
missing: the projector sees each class a handful of times (125 examples a question type, ~6 a keyword), and the LLM
has not learnt to read the slots at all (with the answer's own word embedding put in the slots, the stage's LoRA
copies it in 5 of 15 keyword questions). Two cheap steps supply them:

1. **Alignment** (``train.align_steps``): in a stage that starts a fresh projector (``train.init_from: null``),
   before the LLM steps, the projector alone is trained so that the mean of a
   clip's audio slots picks each closed question's answer among its options by cosine similarity to the options'
   word embeddings (the LLM's own input embeddings; temperature ``train.align_tau``). No LLM forward runs: a step
   costs the projector on cached frozen-encoder tokens (a few ms for the linear kind), so it can read every training
   clip many times, as a probe does. A small term keeps each slot's norm at the word embeddings' mean norm.
2. **Copy warm-up** (``train.copy_warmup``): over the first fraction of the LLM steps the audio slots carry
   ``alpha * e(answer) + (1 - alpha) * projected audio``, alpha falling linearly from 1 to 0 (then plain audio). The
   LLM first learns to answer with the word it finds in the slots, then to read the aligned projector's version of
   it. ``e(word)`` is the mean input embedding of the word's tokens as the answer is written.

Both are skipped when the model has no audio (the no-audio baseline trains the same stages).
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F

from mosaic_core.schedule import cosine_schedule


def word_embeddings(model, words: Sequence[str]) -> torch.Tensor:
    """[len(words), H] float32: the mean input embedding of each word's tokens (tokenised as an answer is)."""
    table = model.base_llm().get_input_embeddings().weight.detach()
    rows = []
    for w in words:
        ids = model.tokenizer(w, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"answer {w!r} has no tokens")
        rows.append(table[ids].float().mean(0))
    return torch.stack(rows)


def copy_weight(step: int, total: int, warmup: float) -> float:
    """alpha of the copy warm-up at optimizer step ``step`` (0-based) of ``total``: 1 -> 0 linearly over the first
    ``warmup`` of the steps, then 0."""
    if warmup <= 0 or total <= 0:
        return 0.0
    return max(0.0, 1.0 - step / (warmup * total))


class AnswerSlots:
    """The copy warm-up's slot targets: ``e(output)`` of each closed training record (one with options; an open
    answer is a sentence, not a word to copy), computed once per distinct answer."""

    def __init__(self, model, records: Sequence[dict]):
        closed = [bool(r.get("options")) for r in records]
        answers = sorted({r["output"] for r, c in zip(records, closed) if c})
        row = {a: i for i, a in enumerate(answers)}
        self._emb = word_embeddings(model, answers) if answers else torch.zeros(1, 1)
        self._answer = [row[r["output"]] if c else -1 for r, c in zip(records, closed)]

    def __call__(self, indices: Sequence[int], alpha: float) -> dict:
        """The model's ``copy_slots`` / ``copy_weight`` for a batch of record indices at weight ``alpha``; rows of
        open records get weight 0."""
        rows = [self._answer[i] for i in indices]
        return {"copy_slots": self._emb[[max(r, 0) for r in rows]],
                "copy_weight": torch.tensor([alpha if r >= 0 else 0.0 for r in rows])}


def option_targets(records: Sequence[dict]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The option vocabulary, each record's answer index [N] and its option mask [N, V] (records with options)."""
    words = sorted({o for r in records for o in r["options"]})
    index = {w: i for i, w in enumerate(words)}
    answer = torch.tensor([index[r["output"]] for r in records])
    mask = torch.zeros(len(records), len(words), dtype=torch.bool)
    for i, r in enumerate(records):
        mask[i, [index[o] for o in r["options"]]] = True
    return words, answer, mask


def align_projector(model, records: Sequence[dict], tokens_of, *, steps: int, batch_size: int = 256,
                    lr: float = 1e-3, tau: float = 0.07, norm_weight: float = 0.1, seed: int = 0,
                    pool: str = "mean", bf16: bool = False, progress=None) -> dict:
    """Train ``model.projector`` alone for ``steps`` steps on the closed records with options (see the module doc).

    ``pool``: how a clip's slots meet an option: ``mean`` (the mean slot's cosine) or ``max`` (the best slot's: a
    clip asked several questions, a word and its speaker's gender, may point one slot at each answer instead of
    the mean at a blend of them).
    ``tokens_of(audio_paths) -> [N, K, D]``: the frozen encoder's tokens (the featurizer's cache). Its own generator
    and optimizer: the global RNG is not touched, so a stage that resumes after alignment matches one that did not
    stop. ``bf16``: autocast as the stage's own steps (1.5x faster for the attentive projector on an AVX512-BF16
    core). Returns a summary (losses, training-batch option accuracy, seconds)."""
    if pool not in ("mean", "max"):
        raise ValueError(f"alignment pool {pool!r}: use mean or max")
    proj = model.projector
    recs = [r for r in records if r.get("options") and r["output"] in r["options"]]
    if not recs:
        raise ValueError("projector alignment needs closed questions with options (none in the stage's records)")
    clips = sorted({r["audio_path"] for r in recs})
    where = {c: i for i, c in enumerate(clips)}
    x = tokens_of(clips).float()
    clip_of = torch.tensor([where[r["audio_path"]] for r in recs])
    words, answer, mask = option_targets(recs)
    emb = word_embeddings(model, words)
    options = F.normalize(emb, dim=-1).to(model.device)
    norm = float(emb.norm(dim=-1).mean())
    was_training = [p.requires_grad for p in proj.parameters()]
    proj.train()
    for p in proj.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(proj.parameters(), lr=lr, weight_decay=0.01)
    sched = cosine_schedule(opt, steps, max(1, steps // 20))
    g = torch.Generator().manual_seed(seed)
    t0, losses, hits = time.perf_counter(), [], []
    for _ in range(steps):
        idx = torch.randint(len(recs), (min(batch_size, len(recs)),), generator=g)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            slots = proj(x[clip_of[idx]].to(model.device)).float()  # [B, n_audio, H]
        if pool == "mean":
            cos = F.normalize(slots.mean(1), dim=-1) @ options.T
        else:
            cos = (F.normalize(slots, dim=-1) @ options.T).amax(1)  # [B, V]: each option's best slot
        logits = (cos / tau).masked_fill(~mask[idx].to(slots.device), -1e4)
        target = answer[idx].to(slots.device)
        loss = F.cross_entropy(logits, target) + norm_weight * (slots.norm(dim=-1) / norm - 1).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        hits.append(float((logits.argmax(-1) == target).float().mean()))
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    for p, req in zip(proj.parameters(), was_training):
        p.grad = None  # nothing of the alignment leaks into the first step of the stage that follows
        p.requires_grad_(req)
    n = max(1, steps // 10)
    return {"steps": steps, "records": len(recs), "clips": len(clips), "seconds": round(time.perf_counter() - t0, 1),
            "first_loss": sum(losses[:n]) / n, "last_loss": sum(losses[-n:]) / n,
            "last_batch_option_accuracy": sum(hits[-n:]) / n}


__all__ = ["AnswerSlots", "align_projector", "copy_weight", "option_targets", "word_embeddings"]
