"""WebDataset shards (encoder/data/shards.py): writer, index, split over ranks x workers, order, resume, bad records.

Runs on a tiny generated corpus (30 clips of 0.05-0.3 s: PCM16 mono 16 kHz, PCM24 stereo 22.05 kHz, float WAV).
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from encoder.data.manifest import read_manifest, write_manifest
from encoder.data.shards import (
    FbankTransform,
    ShardDataset,
    ShardError,
    collate_clips,
    read_index,
    resolve_shards,
    verify_shards,
    write_shards,
)
from encoder.features import FbankConfig, file_to_input

N_CLIPS, SHARD_SIZE = 30, 4  # 8 shards, the last one with 2 clips


def _make_corpus(folder: Path, n: int, seed: int = 0) -> list[dict]:
    """Real audio files of three encodings and a manifest read back through read_manifest."""
    rng = np.random.default_rng(seed)
    (folder / "clips").mkdir(parents=True)
    rows = []
    for i in range(n):
        kind = i % 5
        if kind == 3:
            sr, ch, subtype = 22050, 2, "PCM_24"
        elif kind == 4 and i % 10 == 4:
            sr, ch, subtype = 16000, 1, "FLOAT"
        else:
            sr, ch, subtype = 16000, 1, "PCM_16"
        length = int(sr * rng.uniform(0.05, 0.3))
        t = np.arange(length) / sr
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(length)
        wave = np.stack([wave, -wave], axis=1) if ch == 2 else wave
        name = f"clips/c{i:03d}.wav"
        sf.write(folder / name, wave.astype(np.float32), sr, subtype=subtype)
        # ids with dots and slashes must survive (keys are running numbers, the id lives in the JSON)
        rows.append({"id": f"spk.{i % 3}/clip-{i}", "path": name, "label": f"class{i % 4}", "split": "train",
                     "task": "keywords", "caption": f"clip number {i}", "meta": {"n": i}})
    write_manifest(rows, folder / "manifest.jsonl")
    return read_manifest(folder / "manifest.jsonl")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    rows = _make_corpus(root / "src", N_CLIPS)
    index = write_shards(rows, root / "out", shard_size=SHARD_SIZE, prefix="shard")
    return {"root": root, "rows": rows, "out": root / "out", "index": index}


def _ids(samples) -> list:
    return [s["id"] for s in samples]


def _run(ds, num_workers=0, batch_size=3, batches=None, advance=False):
    """Batches from a real DataLoader (optionally only the first ``batches``, optionally advancing the dataset)."""
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_clips)
    out = []
    for b in loader:
        if batches is not None and len(out) == batches:
            break
        if advance:
            ds.advance(b)
        out.append(b)
    return out


def _flat(batches, key="id"):
    return [x for b in batches for x in b[key]]


# ------------------------------------------------------------------------------------------------------- writer
def test_round_trip_records_and_audio(corpus):
    ds = ShardDataset(corpus["out"], shuffle_buffer=0, shuffle_shards=False)
    samples = list(ds)
    rows = corpus["rows"]
    assert _ids(samples) == [r["id"] for r in rows]  # no shuffling: manifest order
    for s, r in zip(samples, rows):
        assert s["record"] == {k: v for k, v in r.items() if k not in ("path", "rel_path")}
        ref, sr = sf.read(r["path"], dtype="float32", always_2d=True)
        info = sf.info(r["path"])
        assert s["sample_rate"] == sr and s["audio"].shape == (ref.shape[1], ref.shape[0])
        if info.subtype == "FLOAT":  # quantised to 24 bit
            assert np.abs(s["audio"].numpy() - ref.T).max() < 2.0 ** -22
        else:  # integer PCM: sample-exact
            assert np.array_equal(s["audio"].numpy(), ref.T), r["id"]
            ref_int = sf.read(r["path"], dtype="int32", always_2d=True)[0]
            assert np.array_equal(np.round(s["audio"].numpy().T * 2.0 ** 31).astype(np.int64), ref_int)


def test_plain_webdataset_reads_the_shards(corpus):
    import webdataset as wds

    urls = [str(p) for p in resolve_shards(corpus["out"])]
    got = [json.loads(s["json"])["id"] for s in wds.WebDataset(urls, shardshuffle=False)]
    assert got == [r["id"] for r in corpus["rows"]]


def test_index_counts_checksums_atomic_and_reproducible(corpus, tmp_path):
    out, index = corpus["out"], corpus["index"]
    assert read_index(out) == index
    assert index["num_clips"] == N_CLIPS and index["skipped"] == []
    assert [s["clips"] for s in index["shards"]] == [4] * 7 + [2]
    assert [s["name"] for s in index["shards"]] == [f"shard-{i:06d}.tar" for i in range(8)]
    for s in index["shards"]:
        data = (out / s["name"]).read_bytes()
        assert len(data) == s["bytes"] and hashlib.sha256(data).hexdigest() == s["sha256"]
        with tarfile.open(out / s["name"]) as tar:
            assert len(tar.getnames()) == 2 * s["clips"]
    assert sorted(p.name for p in out.iterdir()) == ["index.json"] + [s["name"] for s in index["shards"]]
    assert verify_shards(out) == []
    # same rows -> byte-identical shards
    again = write_shards(corpus["rows"], tmp_path / "again", shard_size=SHARD_SIZE)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in index["shards"]]
    # damage one copy: verify_shards names it
    broken = tmp_path / "again" / "shard-000003.tar"
    data = bytearray(broken.read_bytes())
    data[700] ^= 0xFF
    broken.write_bytes(bytes(data))
    assert verify_shards(tmp_path / "again") == [f"{broken}: checksum mismatch (file changed or damaged)"]
    with pytest.raises(ShardError, match="already holds shards"):
        write_shards(corpus["rows"], tmp_path / "again", shard_size=SHARD_SIZE)
    smaller = write_shards(corpus["rows"][:5], tmp_path / "again", shard_size=SHARD_SIZE, overwrite=True)
    assert [s["clips"] for s in smaller["shards"]] == [4, 1]
    assert sorted(p.name for p in (tmp_path / "again").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]


def test_interrupted_write_leaves_no_partial_file_under_a_final_name(corpus, tmp_path):
    def rows_then_crash():
        yield from corpus["rows"][:6]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(rows_then_crash(), tmp_path / "out", shard_size=SHARD_SIZE)
    # the full first shard is in place; the half-written second one and the index are not
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["shard-000000.tar"]


def test_unreadable_source_clip_is_skipped_and_listed(corpus, tmp_path):
    rows = [dict(r) for r in corpus["rows"][:3]]
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 10)
    rows[1]["path"] = str(tmp_path / "junk.wav")
    index = write_shards(rows, tmp_path / "out", shard_size=10)
    assert index["num_clips"] == 2 and [s["id"] for s in index["skipped"]] == [rows[1]["id"]]
    assert "junk.wav: cannot decode" in index["skipped"][0]["error"]


# -------------------------------------------------------------------------------------------------------- split
@pytest.mark.parametrize("world", [1, 3])
def test_ranks_x_workers_cover_every_clip_once(corpus, world):
    all_ids = sorted(r["id"] for r in corpus["rows"])
    seen = []
    counts = ShardDataset(corpus["out"], rank=0, world=world).clips_per_rank()
    for rank in range(world):
        ds = ShardDataset(corpus["out"], rank=rank, world=world, seed=5, shuffle_buffer=6)
        batches = _run(ds, num_workers=2)
        ids = _flat(batches)
        assert len(ids) == counts[rank]
        assert {p[1] for b in batches for p in b["pos"]} == {0, 1}  # both workers contributed
        seen += ids
    assert len(seen) == len(set(seen)) == N_CLIPS  # no duplicates
    assert sorted(seen) == all_ids  # full coverage
    if world == 3:  # 8 shards over 3 ranks: 3 + 3 + 2 shards, the 2-clip shard is rank 1's
        assert counts == [12, 10, 8]


def test_more_ranks_than_shards_is_refused(corpus):
    with pytest.raises(ShardError, match="8 shards cannot feed 9 ranks"):
        ShardDataset(corpus["out"], rank=0, world=9)


# -------------------------------------------------------------------------------------------------------- order
def test_order_is_deterministic_per_seed_and_epoch(corpus):
    def epoch_samples(epoch, seed=1):
        ds = ShardDataset(corpus["out"], seed=seed, shuffle_buffer=8)
        ds.set_epoch(epoch)
        return list(ds)

    a, b = epoch_samples(0), epoch_samples(0)
    assert _ids(a) == _ids(b)
    assert all(torch.equal(x["audio"], y["audio"]) for x, y in zip(a, b))
    assert _ids(a) != [r["id"] for r in corpus["rows"]]  # actually shuffled
    other = _ids(epoch_samples(1))
    assert other != _ids(a) and sorted(other) == sorted(_ids(a))
    assert _ids(epoch_samples(0, seed=2)) != _ids(a)


# ------------------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("num_workers,stop_after", [(0, 4), (2, 3)])
def test_mid_epoch_resume_equals_uninterrupted(corpus, num_workers, stop_after):
    def make():
        ds = ShardDataset(corpus["out"], seed=3, shuffle_buffer=5)
        ds.set_epoch(2)
        return ds

    full = _run(make(), num_workers=num_workers)
    ds = make()
    first = _run(ds, num_workers=num_workers, batches=stop_after, advance=True)
    state = json.loads(json.dumps(ds.state_dict()))  # survives a JSON checkpoint
    resumed_ds = make()
    resumed_ds.load_state_dict(state)
    resumed_ds.set_epoch(2)  # same epoch: keeps the progress
    rest = _run(resumed_ds, num_workers=num_workers)
    assert len(first) == stop_after and rest
    assert _flat(first) + _flat(rest) == _flat(full)
    got, want = _flat(first + rest, "audio"), _flat(full, "audio")
    assert all(torch.equal(x, y) for x, y in zip(got, want))
    resumed_ds.set_epoch(3)  # a new epoch starts from the beginning
    assert len(_flat(_run(resumed_ds, num_workers=num_workers))) == N_CLIPS


def test_resume_refuses_other_settings(corpus):
    ds = ShardDataset(corpus["out"], seed=3)
    _run(ds, num_workers=2, batches=2, advance=True)
    state = ds.state_dict()
    with pytest.raises(ValueError, match="world"):
        ShardDataset(corpus["out"], seed=3, rank=0, world=2).load_state_dict(state)
    other = ShardDataset(corpus["out"], seed=3)
    other.load_state_dict(state)
    with pytest.raises(RuntimeError, match="same num_workers"):
        list(other)


def test_persistent_workers_are_refused(corpus):
    loader = DataLoader(ShardDataset(corpus["out"]), batch_size=4, num_workers=1, persistent_workers=True,
                        collate_fn=collate_clips)
    assert len(_flat(list(loader))) == N_CLIPS
    with pytest.raises(RuntimeError, match="persistent_workers"):
        list(loader)


# -------------------------------------------------------------------------------------------------- bad records
@pytest.fixture(scope="module")
def bad_shards(corpus):
    """Three shards: good clips mixed with a corrupt FLAC, bad JSON, a clip without audio; one truncated tar."""
    import webdataset as wds

    folder = corpus["root"] / "bad"
    folder.mkdir()
    good = {s["record"]["id"]: s for s in ShardDataset(corpus["out"], shuffle_buffer=0, shuffle_shards=False)}
    flac = {}
    for rid, s in good.items():
        buf = io.BytesIO()
        sf.write(buf, s["audio"].numpy().T, s["sample_rate"], format="FLAC", subtype="PCM_24")
        flac[rid] = buf.getvalue()
    ids = list(good)
    plan = [  # (shard, [(key, record-or-bytes, flac-bytes-or-None)])
        [("a0", ids[0], flac[ids[0]]), ("a1", ids[1], b"fLaC" + bytes(200)), ("a2", ids[2], flac[ids[2]])],
        [("b0", b"{not json", flac[ids[3]]), ("b1", ids[4], flac[ids[4]]), ("b2", ids[5], None),
         ("b3", ids[6], flac[ids[6]])],
        [(f"c{i}", ids[7 + i], flac[ids[7 + i]]) for i in range(4)],
    ]
    for n, entries in enumerate(plan):
        with open(folder / f"bad-{n}.tar", "wb") as f, wds.TarWriter(f) as w:
            for key, rec, audio in entries:
                sample = {"__key__": key,
                          "json": rec if isinstance(rec, bytes) else json.dumps(good[rec]["record"]).encode()}
                if audio is not None:
                    sample["flac"] = audio
                w.write(sample)
    cut = folder / "bad-2.tar"  # keep the first two clips whole, cut the third one's JSON in half
    with tarfile.open(cut) as tar:
        third = tar.getmember("c2.json")
    cut.write_bytes(cut.read_bytes()[:third.offset_data + third.size // 2])
    expected_good = {ids[0], ids[2], ids[4], ids[6], ids[7], ids[8]}
    # bad key -> the id the quarantine can name (None where the JSON is unreadable or missing)
    return folder, expected_good, {"a1": ids[1], "b0": None, "b2": ids[5], "c2": None}


def test_bad_records_are_skipped_counted_and_quarantined(bad_shards, tmp_path):
    folder, expected_good, bad_keys = bad_shards
    q = tmp_path / "quarantine.rank0.jsonl"
    ds = ShardDataset(str(folder / "bad-*.tar"), seed=0, shuffle_buffer=3, quarantine=q)
    batches = _run(ds, num_workers=2, batch_size=2, advance=True)
    ids = _flat(batches)
    assert sorted(ids) == sorted(expected_good) and len(ids) == len(set(ids))
    lines = [json.loads(x) for x in q.read_text().splitlines()]
    assert ds.bad_records == len(lines) == ds.state_dict()["bad_records"] == 5
    errors = {rec["key"]: rec["error"] for rec in lines}
    assert set(errors) == set(bad_keys) | {None}  # None: the damaged tar itself
    assert "cannot decode FLAC" in errors["a1"] and "bad JSON" in errors["b0"] and "no .flac" in errors["b2"]
    assert "no .json" in errors["c2"] and "unreadable tar after c2" in errors[None]
    assert {rec["shard"] for rec in lines if rec["key"] in ("c2", None)} == {"bad-2.tar"}
    assert {rec["key"]: rec["id"] for rec in lines} == {**bad_keys, None: None}
    assert all(rec["epoch"] == 0 and rec["rank"] == 0 for rec in lines)


def test_bad_records_are_reported_once_across_a_resume(bad_shards, tmp_path):
    folder = bad_shards[0]
    full = _run(ShardDataset(str(folder / "bad-*.tar"), seed=1, shuffle_buffer=3), batch_size=2)
    ds = ShardDataset(str(folder / "bad-*.tar"), seed=1, shuffle_buffer=3)
    first = _run(ds, batch_size=2, batches=1, advance=True)
    resumed = ShardDataset(str(folder / "bad-*.tar"), seed=1, shuffle_buffer=3)
    resumed.load_state_dict(ds.state_dict())
    rest = _run(resumed, batch_size=2, advance=True)
    assert _flat(first) + _flat(rest) == _flat(full)
    assert resumed.bad_records == 5 == len(_flat(full, "bad"))
    # in shard order the last good clip (c1) is followed by two bad records: it carries them, and a resume after
    # it must neither yield nor report anything again
    ds = ShardDataset(str(folder / "bad-*.tar"), shuffle_buffer=0, shuffle_shards=False)
    batches = _run(ds, batch_size=2, advance=True)
    assert [b["key"] for b in batches[-1]["bad"]] == ["c2", None] and ds.bad_records == 5
    q = tmp_path / "quarantine.jsonl"
    resumed = ShardDataset(str(folder / "bad-*.tar"), shuffle_buffer=0, shuffle_shards=False, quarantine=q)
    resumed.load_state_dict(ds.state_dict())
    assert list(resumed) == [] and resumed.bad_records == 5 and not q.exists()


# ------------------------------------------------------------------------------------------ patterns and errors
def test_glob_and_brace_patterns(corpus):
    out = corpus["out"]
    listed = resolve_shards(out)
    assert resolve_shards(str(out / "shard-*.tar")) == listed
    assert resolve_shards(str(out / "shard-{000000..000007}.tar")) == listed
    ds = ShardDataset(str(out / "shard-{000000..000007}.tar"), seed=0)
    assert sorted(_ids(ds)) == sorted(r["id"] for r in corpus["rows"])
    assert ds.clips_per_rank() == [N_CLIPS]  # counts from the index beside the shards
    assert resolve_shards(str(out / "shard-00000[0-1].tar")) == listed[:2]


@pytest.mark.parametrize("source,message", [
    ("{root}/nowhere", "shard folder not found: {root}/nowhere"),
    ("{root}/out/none-*.tar", "no shard files match '{root}/out/none-*.tar'"),
    ("{root}/out/shard-{{000000..000009}}.tar", ("2 of 10 shards named by '{root}/out/shard-{{000000..000009}}.tar' "
                                                 "do not exist (first missing: {root}/out/shard-000008.tar)")),
    ("{root}/src", "{root}/src: no index.json (not a folder written by write_shards)"),
])
def test_missing_shards_give_one_clear_line(corpus, source, message):
    root = corpus["root"]
    with pytest.raises(ShardError) as err:
        ShardDataset(source.format(root=root))
    assert str(err.value) == message.format(root=root)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------------ features
def test_fbank_transform_equals_the_manifest_path(corpus):
    cfg = FbankConfig(target_frames=48)
    ds = ShardDataset(corpus["out"], shuffle_buffer=0, shuffle_shards=False, transform=FbankTransform(cfg))
    by_id = {r["id"]: r for r in corpus["rows"]}
    samples = list(ds)
    assert len(samples) == N_CLIPS and set(samples[0]) == {"id", "record", "input", "bad", "pos"}
    for s in samples[:10]:  # PCM16 16 kHz, PCM24 stereo 22.05 kHz (resampled) and float clips among them
        path = by_id[s["id"]]["path"]
        if sf.info(path).subtype == "FLOAT":  # stored as 24-bit PCM
            assert torch.allclose(s["input"], file_to_input(path, cfg), atol=1e-3), s["id"]
        else:
            assert torch.equal(s["input"], file_to_input(path, cfg)), s["id"]
    batch = collate_clips(samples[:4])
    assert batch["input"].shape == (4, 48, cfg.num_mel_bins) and len(batch["pos"]) == 4
