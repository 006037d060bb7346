"""Chat-template formatting, answer-only labels, audio slot positions, padding (real SmolLM2 tokenizer)."""
import pytest

from mosaic_alm.data import IGNORE, PromptFormatter, collate


@pytest.fixture(scope="module")
def tok():
    from mosaic_alm.llm import load_tokenizer

    return load_tokenizer()


def test_labels_cover_exactly_the_answer(tok):
    fmt = PromptFormatter(tok, n_audio=8)
    e = fmt.encode("Which word is spoken?", "seven")
    ids, labels = e["input_ids"], e["labels"]
    assert len(ids) == len(labels) == len(e["audio_mask"])
    answer_pos = [i for i, label in enumerate(labels) if label != IGNORE]
    assert answer_pos == list(range(e["prompt_len"], len(ids)))
    # the supervised text is the assistant turn as the chat template renders it, end-of-turn included
    msgs = [{"role": "user", "content": "<audio>\nWhich word is spoken?"}]
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "seven"}], tokenize=False)
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert tok.decode([labels[i] for i in answer_pos]) == full[len(prompt):]
    assert tok.decode([labels[i] for i in answer_pos]).startswith("seven<|im_end|>")


def test_loss_on_all_masks_only_audio(tok):
    e = PromptFormatter(tok, n_audio=8, loss_on="all").encode("Which word?", "seven")
    for i, (label, a) in enumerate(zip(e["labels"], e["audio_mask"])):
        assert (label == IGNORE) == bool(a), i


def test_audio_slots_sit_at_the_placeholder(tok):
    fmt = PromptFormatter(tok, n_audio=8)
    e = fmt.encode("What is <audio> this?")
    pos = [i for i, a in enumerate(e["audio_mask"]) if a]
    assert len(pos) == 8 and pos == list(range(pos[0], pos[0] + 8))
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is <audio> this?"}], tokenize=False,
                                     add_generation_prompt=True)
    before = tok.decode(e["input_ids"][:pos[0]])
    after = tok.decode(e["input_ids"][pos[-1] + 1:])
    assert before + "<audio>" + after == prompt
    # no placeholder in the question: it goes in front of the question, inside the user turn
    e2 = fmt.encode("Which word?")
    p2 = [i for i, a in enumerate(e2["audio_mask"]) if a]
    assert tok.decode(e2["input_ids"][:p2[0]]).endswith("user\n")


def test_prepend_and_no_audio(tok):
    e = PromptFormatter(tok, n_audio=4, position="prepend").encode("Hi <audio>?", "x")
    assert e["audio_mask"][:4] == [1] * 4 and sum(e["audio_mask"]) == 4
    assert "<audio>" not in tok.decode(e["input_ids"][4:])
    n = PromptFormatter(tok, n_audio=8, audio_enabled=False).encode("Which word? <audio>", "x")
    assert sum(n["audio_mask"]) == 0 and "<audio>" not in tok.decode(n["input_ids"])


def test_collate_left_and_right(tok):
    fmt = PromptFormatter(tok, n_audio=2)
    items = [dict(fmt.encode(q, "yes"), audio=f"{i}.wav", index=i) for i, q in enumerate(["a?", "a longer question?"])]
    for side in ("left", "right"):
        b = collate(items, tok.pad_token_id, side)
        assert b["input_ids"].shape == b["labels"].shape == b["audio_mask"].shape
        assert b["audio_mask"].sum(1).tolist() == [2, 2]
        short = b["attention_mask"][0]
        assert (short[0] == 0) if side == "left" else (short[-1] == 0)
        assert (b["labels"][b["attention_mask"] == 0] == IGNORE).all()
        assert b["audios"] == ["0.wav", "1.wav"]
    # answer labels survive padding unchanged
    b = collate(items, tok.pad_token_id, "left")
    lab = b["labels"][0][b["labels"][0] != IGNORE].tolist()
    assert lab == [label for label in items[0]["labels"] if label != IGNORE]


def test_balance_cycles_every_group_to_the_largest():
    from mosaic_alm.data import balance_records

    recs = [{"id": f"k{i}", "qtype": "keyword_word"} for i in range(10)] + \
           [{"id": f"s{i}", "qtype": "sound_event"} for i in range(3)]
    out = balance_records(recs, "qtype", seed=0)
    by = {q: [r["id"] for r in out if r["qtype"] == q] for q in ("keyword_word", "sound_event")}
    assert len(by["keyword_word"]) == len(by["sound_event"]) == 10
    assert sorted(by["keyword_word"]) == sorted(r["id"] for r in recs[:10])  # the large group: each once
    counts = {i: by["sound_event"].count(i) for i in ("s0", "s1", "s2")}
    assert sorted(counts.values()) == [3, 3, 4]  # the small group cycled pass by pass, not drawn with replacement
    assert out == balance_records(recs, "qtype", seed=0) and out != balance_records(recs, "qtype", seed=1)


def test_balance_names_a_record_without_the_field():
    from mosaic_alm.data import balance_records
    from mosaic_core.config import ConfigError

    with pytest.raises(ConfigError, match="'x1'.*'task'"):
        balance_records([{"id": "x0", "task": "a"}, {"id": "x1"}], "task")
