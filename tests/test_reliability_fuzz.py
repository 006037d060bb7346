"""Reliability, item 7: property-based tests and a byte-level fuzz of the decoder.

* Front end: any length, sample rate, channel count, dtype and values -> finite [target_frames, 128] features or
  AudioError (nothing else, never NaN/inf).
* Manifest parsing: any bytes in a manifest -> rows or ManifestError naming the line (nothing else).
* Chat/label formatting (mosaic_alm.data.PromptFormatter): labels cover exactly the answer, audio slots are
  contiguous and ``n_audio`` long, for any instruction/answer text.
* Decoder: mutated WAV/FLAC/OGG/MP3 bytes -> decoded finite audio or AudioError. Bounded to a few seconds;
  ``MOSAIC_ALM_FUZZ_SECONDS=600`` (or any number) runs longer.
(The masking property test lives in tests/test_masking.py.)
"""
from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encoder.data.manifest import ManifestError, read_manifest
from encoder.features import AudioError, FbankConfig, file_to_input, prepare_waveform, waveform_to_input

torch.set_num_threads(1)
CFG = FbankConfig(target_frames=64, max_seconds=30.0)
FUZZ_SECONDS = float(os.environ.get("MOSAIC_ALM_FUZZ_SECONDS", "4"))
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# -------------------------------------------------------------------------------------------------- front end
@st.composite
def waveforms(draw):
    n = draw(st.one_of(st.integers(0, 400), st.integers(0, 40000)))
    ch = draw(st.integers(1, 8))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int16, np.int32, np.uint8]))
    kind = draw(st.sampled_from(["noise", "zeros", "dc", "huge", "special", "tiny"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "noise":
        x = rng.standard_normal((ch, n)) * draw(st.sampled_from([1e-6, 0.1, 1.0, 100.0]))
    elif kind == "zeros":
        x = np.zeros((ch, n))
    elif kind == "dc":
        x = np.full((ch, n), draw(st.floats(-2.0, 2.0)))
    elif kind == "huge":
        x = rng.standard_normal((ch, n)) * 1e30
    elif kind == "tiny":
        x = rng.standard_normal((ch, n)) * 1e-30
    else:
        x = rng.standard_normal((ch, n))
        if n:
            x.flat[rng.integers(0, x.size, size=max(1, x.size // 100))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf]))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        with np.errstate(invalid="ignore"):
            x = np.clip(np.nan_to_num(x * info.max), info.min, info.max)
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.astype(dtype)
    return x if ch > 1 or draw(st.booleans()) else x[0]


@settings(max_examples=120, **SETTINGS)
@given(wave=waveforms(), sr=st.one_of(st.sampled_from([8000, 16000, 22050, 44100, 48000, 96000]),
                                      st.integers(-5, 400000)))
def test_front_end_gives_finite_features_or_audio_error(wave, sr):
    try:
        w = prepare_waveform(wave, sr, 16000, source="fuzz")
        x = waveform_to_input(w, CFG, source="fuzz")
    except AudioError as err:
        assert err.source == "fuzz" and err.reason
        return
    assert x.shape == (CFG.target_frames, CFG.num_mel_bins) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


# --------------------------------------------------------------------------------------------------- manifests
_field = st.one_of(st.text(max_size=8), st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2),
                   st.dictionaries(st.text(max_size=2), st.integers(), max_size=1), st.floats(allow_nan=True))


@st.composite
def manifest_lines(draw):
    kind = draw(st.sampled_from(["row", "row", "json", "text", "bytes", "blank"]))
    if kind == "row":
        row = {k: draw(_field) for k in draw(st.lists(st.sampled_from(["id", "path", "label", "split", "task",
                                                                       "extra"]), unique=True))}
        return json.dumps(row).encode()
    if kind == "json":
        return json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=2), st.text(max_size=5),
                                         st.integers()))).encode()
    if kind == "text":
        return draw(st.text(max_size=30)).replace("\n", " ").encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return draw(st.binary(max_size=30)).replace(b"\n", b" ")
    return b"   "


@settings(max_examples=200, **SETTINGS)
@given(lines=st.lists(manifest_lines(), max_size=6), classes=st.sampled_from([None, ["a", "b"]]),
       check=st.booleans())
def test_manifest_parsing_gives_rows_or_a_manifest_error(tmp_path, lines, classes, check):
    m = tmp_path / "m.jsonl"
    m.write_bytes(b"\n".join(lines) + b"\n")
    try:
        rows = read_manifest(m, classes=classes, check_files=check)
    except ManifestError as err:
        msg = str(err)
        assert msg.startswith(f"{m}:"), msg
        if "manifest not found" not in msg:
            line = int(msg[len(str(m)) + 1:].split(":")[0])
            assert 1 <= line <= len(lines), msg
        return
    assert len({str(r["id"]) for r in rows}) == len(rows)
    for r in rows:
        assert os.path.isabs(r["path"]) and "rel_path" in r


# ------------------------------------------------------------------------------------ chat / label formatting
@pytest.fixture(scope="module")
def formatter_cls():
    pytest.importorskip("transformers")
    from mosaic_alm.data import IGNORE, PromptFormatter
    from mosaic_alm.llm import load_tokenizer

    try:
        tok = load_tokenizer()
    except Exception as exc:  # the offline tokenizer package is not installed here
        pytest.skip(f"no tokenizer: {exc}")
    return tok, PromptFormatter, IGNORE


_text = st.text(st.characters(whitelist_categories=("Lu", "Ll", "Nd", "Po", "Zs"), max_codepoint=0x30FF,
                              blacklist_characters="<>"), min_size=1, max_size=40).filter(lambda t: t.strip())


@settings(max_examples=40, **SETTINGS)
@given(question=_text, answer=_text, n_audio=st.integers(1, 16), placeholder=st.booleans())
def test_chat_labels_cover_exactly_the_answer(formatter_cls, question, answer, n_audio, placeholder):
    tok, PromptFormatter, IGNORE = formatter_cls
    q = f"{question[:len(question) // 2]}<audio>{question[len(question) // 2:]}" if placeholder else question
    e = PromptFormatter(tok, n_audio=n_audio).encode(q, answer)
    ids, labels, audio = e["input_ids"], e["labels"], e["audio_mask"]
    assert len(ids) == len(labels) == len(audio)
    sup = [i for i, lab in enumerate(labels) if lab != IGNORE]
    assert sup == list(range(e["prompt_len"], len(ids))) and sup
    assert all(labels[i] == ids[i] for i in sup)
    slots = [i for i, a in enumerate(audio) if a]
    assert len(slots) == n_audio and slots == list(range(slots[0], slots[0] + n_audio))
    assert slots[-1] < e["prompt_len"]
    assert tok.decode([labels[i] for i in sup]).startswith(answer[:5])


# ------------------------------------------------------------------------------------------ decoder byte fuzz
def _seeds(tmp_path):
    t = np.arange(8000) / 16000
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = {}
    for fmt, sub, ext in [("WAV", "PCM_16", "wav"), ("WAV", "FLOAT", "wav"), ("WAV", "PCM_U8", "wav"),
                          ("FLAC", None, "flac"), ("OGG", None, "ogg"), ("MP3", None, "mp3")]:
        buf = io.BytesIO()
        sf.write(buf, x, 16000, format=fmt, subtype=sub)
        out[f"{fmt}-{sub}.{ext}"] = buf.getvalue()
    return out


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        op = rng.integers(0, 6)
        if op == 0 and b:  # flip bytes
            i = int(rng.integers(0, len(b)))
            b[i] = int(rng.integers(0, 256))
        elif op == 1 and b:  # truncate
            del b[int(rng.integers(0, len(b))):]
        elif op == 2:  # insert noise
            i = int(rng.integers(0, len(b) + 1))
            b[i:i] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        elif op == 3 and len(b) > 8:  # header fields: write a random 32-bit value inside the first 64 bytes
            i = int(rng.integers(0, min(60, len(b) - 4)))
            b[i:i + 4] = int(rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, int(rng.integers(0, 2**32))])).to_bytes(
                4, "little")
        elif op == 4 and len(b) > 16:  # duplicate a chunk
            i = int(rng.integers(0, len(b) - 8))
            b[i:i] = b[i:i + int(rng.integers(1, 512))]
        elif op == 5 and b:  # zero a run
            i = int(rng.integers(0, len(b)))
            b[i:i + int(rng.integers(1, 256))] = bytes(min(len(b) - i, int(rng.integers(1, 256))))
    return bytes(b)


def test_decoder_byte_fuzz(tmp_path):
    seeds = _seeds(tmp_path)
    rng = np.random.default_rng(int(os.environ.get("MOSAIC_ALM_FUZZ_SEED", "0")))
    counts = {"cases": 0, "decoded": 0, "refused": 0}
    deadline = time.time() + FUZZ_SECONDS
    names = sorted(seeds)
    while time.time() < deadline or counts["cases"] < len(names):
        name = names[counts["cases"] % len(names)]
        p = tmp_path / f"fuzz_{counts['cases'] % 50}_{name}"
        p.write_bytes(_mutate(seeds[name], rng))
        counts["cases"] += 1
        try:
            x = file_to_input(p, CFG)
        except AudioError as err:
            assert err.source == str(p) and err.reason, str(err)
            counts["refused"] += 1
            continue
        assert x.shape == (CFG.target_frames, CFG.num_mel_bins) and torch.isfinite(x).all()
        counts["decoded"] += 1
    print(f"\n[decoder-fuzz] {counts}")
    assert counts["cases"] >= len(names)
