"""Instruction data for the ALM: chat-template formatting, answer-only labels, padding collator.

Records are those written by :mod:`mosaic_alm.instructions` (``{root}/instructions/{split}.json``)::

    {"id", "audio_id", "audio_path", "instruction", "input", "output", "task", "qtype", "open_ended", "options"}

Formatting uses the tokenizer's own chat template and nothing hand-written: the prompt is
``apply_chat_template([system?, user], add_generation_prompt=True)``, the full example is the same conversation plus
the assistant turn, and the answer is the full text minus the prompt (for ChatML: ``"a dog<|im_end|>\\n"``). The
prompt text is split at the audio placeholder and tokenised piecewise, with ``n_audio`` slot positions between the
pieces; the split is identical in training and inference. Labels are -100 on the prompt and the audio slots
(``prompt.loss_on: answer``, the default) or on the audio slots only (``all``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch

from mosaic_core.config import ConfigError, NonNegInt

IGNORE = -100


@dataclass
class InstructionDataConfig:
    root: str = "data/embedded-small"  # holds instructions/{train,valid,test}.json
    train_split: str = "train"
    eval_split: str = "valid"
    tasks: list[str] | None = None  # None: all tasks
    qtypes: list[str] | None = None  # None: all question types (e.g. [keyword_word, instrument_family, sound_event])
    kind: Literal["closed", "open", "all"] = "closed"  # closed-ended, open-ended or both
    max_train: NonNegInt = 0  # 0: all
    max_eval: NonNegInt = 0
    # draw training records evenly over this field's values (qtype | task): each group's records are cycled up to
    # the largest group's count, so a rare question type (sound_event: 3% of the closed questions) is trained as
    # often as a common one; null: as the records come
    balance: Literal["qtype", "task"] | None = None
    # WebDataset shards holding the clips (a folder written by encoder.data.shards.write_shards, a glob or a brace
    # pattern), matched to the records by audio_id = the clip's manifest id; null = the audio_path files
    shards: str | None = None


def load_records(root: str | os.PathLike, split: str, tasks: Sequence[str] | None = None, kind: str = "all",
                 limit: int = 0, seed: int = 0, qtypes: Sequence[str] | None = None) -> list[dict]:
    """Read ``{root}/instructions/{split}.json``; audio paths are resolved against ``root`` when relative."""
    root = Path(root)
    path = root / "instructions" / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no instruction file (run `mosaic-alm make-instructions` first)")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    out = []
    for i, r in enumerate(records):
        for key in ("audio_path", "instruction", "output"):
            if key not in r:
                raise ConfigError(f"{path}: record {i} has no {key!r}")
        if tasks and r.get("task") not in tasks:
            continue
        if qtypes and r.get("qtype") not in qtypes:
            continue
        if kind == "closed" and r.get("open_ended", False):
            continue
        if kind == "open" and not r.get("open_ended", False):
            continue
        r = dict(r)
        ap = Path(r["audio_path"])
        if not ap.is_absolute():
            for base in (root, root.parent, Path.cwd()):
                if (base / ap).exists():
                    ap = base / ap
                    break
        r["audio_path"] = str(ap)
        out.append(r)
    if limit and len(out) > limit:
        g = torch.Generator().manual_seed(seed)
        keep = sorted(torch.randperm(len(out), generator=g)[:limit].tolist())
        out = [out[i] for i in keep]
    return out


def balance_records(records: Sequence[dict], key: str, seed: int = 0) -> list[dict]:
    """Every group of ``records`` by ``record[key]`` cycled up to the largest group's size (each pass through a
    group in its own seeded order), so a uniform draw from the result picks each group equally often."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        if key not in r:
            raise ConfigError(f"data.balance={key}: record {r.get('id', '?')!r} has no {key!r} field")
        groups.setdefault(str(r[key]), []).append(r)
    size = max((len(g) for g in groups.values()), default=0)
    g = torch.Generator().manual_seed(seed)
    out: list[dict] = []
    for name in sorted(groups):
        rows, order = groups[name], []
        while len(order) < size:
            order += torch.randperm(len(rows), generator=g).tolist()
        out += [rows[i] for i in order[:size]]
    return out


def question_text(record: dict) -> str:
    q = record["instruction"].strip()
    extra = (record.get("input") or "").strip()
    return f"{q}\n{extra}" if extra else q


def answer_text(record: dict) -> str:
    out = record["output"]
    return out if isinstance(out, str) else out[0]


class PromptFormatter:
    """Turns (question, answer) into token ids, audio-slot mask and labels with the tokenizer's chat template."""

    def __init__(self, tokenizer, n_audio: int, audio_enabled: bool = True, position: str = "placeholder",
                 placeholder: str = "<audio>", system: str | None = None, loss_on: str = "answer"):
        self.tok = tokenizer
        self.n_audio = n_audio if audio_enabled else 0
        self.audio_enabled = audio_enabled
        self.position = position
        self.placeholder = placeholder
        self.system = system
        self.loss_on = loss_on
        self.slot_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def for_model(cls, model) -> "PromptFormatter":
        c = model.cfg
        return cls(model.tokenizer, model.n_audio_tokens, c.audio.enabled, c.audio.position, c.audio.placeholder,
                   c.prompt.system, c.prompt.loss_on)

    def _messages(self, question: str) -> list[dict]:
        q = question.strip()
        if self.audio_enabled and self.position == "placeholder":
            if self.placeholder not in q:
                q = f"{self.placeholder}\n{q}"
            if q.count(self.placeholder) != 1:
                raise ValueError(f"question holds the audio placeholder {self.placeholder!r} more than once: {q!r}")
        else:
            q = q.replace(self.placeholder, "").strip()
        msgs = [{"role": "system", "content": self.system}] if self.system is not None else []
        return msgs + [{"role": "user", "content": q}]

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def encode(self, question: str, answer: str | None = None) -> dict:
        """Returns ``input_ids``, ``audio_mask``, ``labels`` (lists) and ``prompt_len`` (tokens before the answer)."""
        msgs = self._messages(question)
        prompt = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        if self.audio_enabled and self.position == "placeholder":
            pre, post = (self._ids(t) for t in prompt.split(self.placeholder))
            ids = pre + [self.slot_id] * self.n_audio + post
            audio = [0] * len(pre) + [1] * self.n_audio + [0] * len(post)
        else:
            text = self._ids(prompt)
            ids = [self.slot_id] * self.n_audio + text
            audio = [1] * self.n_audio + [0] * len(text)
        prompt_len = len(ids)
        labels = [IGNORE if a else i for i, a in zip(ids, audio)] if self.loss_on == "all" else [IGNORE] * len(ids)
        if answer is not None:
            full = self.tok.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False)
            if not full.startswith(prompt):
                raise ConfigError("the chat template does not render the prompt as a prefix of the full conversation;"
                                  " cannot find the answer tokens")
            ans = self._ids(full[len(prompt):])
            ids += ans
            audio += [0] * len(ans)
            labels += ans
        return {"input_ids": ids, "audio_mask": audio, "labels": labels, "prompt_len": prompt_len}


class InstructionDataset(torch.utils.data.Dataset):
    def __init__(self, records: list[dict], formatter: PromptFormatter, with_answer: bool = True):
        self.records = records
        self.fmt = formatter
        self.with_answer = with_answer

    def __len__(self):
        return len(self.records)

    def lengths(self) -> list[int]:
        """Every example's token count (audio slots included), each distinct (question, answer) encoded once."""
        seen: dict[tuple[str, str | None], int] = {}
        out = []
        for r in self.records:
            key = (question_text(r), answer_text(r) if self.with_answer else None)
            if key not in seen:
                seen[key] = len(self.fmt.encode(*key)["input_ids"])
            out.append(seen[key])
        return out

    def __getitem__(self, i):
        r = self.records[i]
        item = self.fmt.encode(question_text(r), answer_text(r) if self.with_answer else None)
        item["audio"] = r["audio_path"]
        item["index"] = i
        return item


def collate(items: list[dict], pad_id: int, padding_side: str = "right") -> dict:
    """Pad to the longest; ``left`` for generation, ``right`` for training (positions then start at 0)."""
    n = max(len(x["input_ids"]) for x in items)
    out = {k: [] for k in ("input_ids", "attention_mask", "audio_mask", "labels")}
    for x in items:
        pad = n - len(x["input_ids"])
        rows = {"input_ids": (x["input_ids"], pad_id), "attention_mask": ([1] * len(x["input_ids"]), 0),
                "audio_mask": (x["audio_mask"], 0), "labels": (x["labels"], IGNORE)}
        for k, (v, fill) in rows.items():
            out[k].append([fill] * pad + v if padding_side == "left" else v + [fill] * pad)
    batch = {k: torch.tensor(v) for k, v in out.items()}
    batch["audio_mask"] = batch["audio_mask"].bool()
    batch["audios"] = [x["audio"] for x in items]
    batch["index"] = [x["index"] for x in items]
    return batch


class Collator:
    def __init__(self, pad_id: int, padding_side: str = "right"):
        self.pad_id, self.padding_side = pad_id, padding_side

    def __call__(self, items):
        return collate(items, self.pad_id, self.padding_side)


__all__ = ["InstructionDataConfig", "balance_records", "load_records", "PromptFormatter", "InstructionDataset",
           "collate", "Collator", "question_text", "answer_text", "IGNORE"]
