"""ALM stages from WebDataset shards (data.shards): the token pass over real shards of the embedded keyword clips
(the ``embedded_shards`` fixture) gives the same losses and weights as the files; instructions naming clips in no
shard are one line; a bad record is skipped, quarantined and its instructions dropped; two ranks split the pass."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from mosaic_core.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _shard_ids(shards: Path) -> list[str]:
    ids = []
    for tar_path in sorted(shards.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            ids += [json.loads(tar.extractfile(m).read())["id"] for m in tar if m.name.endswith(".json")]
    return ids


@pytest.fixture(scope="module")
def shard_root(embedded_instructions, embedded_shards, tmp_path_factory) -> Path:
    """An instruction root whose training questions (keyword_word) name exactly the 48 clips in the shards, by
    audio_id and by absolute audio_path (so the same stage also runs from the files); valid stays on the files."""
    root = tmp_path_factory.mktemp("alm-shard-root")
    ids = set(_shard_ids(embedded_shards))
    (root / "instructions").mkdir()
    for split in ("train", "valid"):
        recs = [dict(r, audio_path=str(embedded_instructions / r["audio_path"]))
                for r in json.loads((embedded_instructions / "instructions" / f"{split}.json").read_text())
                if r["qtype"] == "keyword_word" and (split == "valid" or r["audio_id"] in ids)]
        (root / "instructions" / f"{split}.json").write_text(json.dumps(recs))
    return root


@pytest.fixture(autouse=True)
def own_token_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOSAIC_ALM_TOKEN_CACHE", str(tmp_path / "token-cache"))


def _cfg(root, out, steps=3, **over):
    items = {"data.root": root, "output_dir": out, "name": "s", "audio.encoder": "random:tiny",
             "train.max_steps": steps, "train.batch_size": 4, "prompt.system": "''", "data.qtypes": "[keyword_word]",
             "train.eval_batches": 1, "train.warmup_ratio": 0.0, "projector.stats_clips": 8, "train.ckpt_every": 0,
             **over}
    return load_config(REPO / "configs/alm/stage1.yaml", [f"{k}={v}" for k, v in items.items()])


def test_stage_from_shards_equals_stage_from_files(shard_root, embedded_shards, tmp_path, fp32_everywhere):
    """Same records, same order, same tokens (the shard FLAC decodes to the WAV's samples): bit-identical losses,
    held-out loss and trained weights; the shard run encoded its 48 clips from the shards (another cache key)."""
    from recipes.train_alm import train_stage

    files = train_stage(_cfg(shard_root, tmp_path / "files"), quiet=True)
    shards = train_stage(_cfg(shard_root, tmp_path / "shards", **{"data.shards": embedded_shards}), quiet=True)
    assert files["train_records"] == shards["train_records"] == 48
    assert shards["train_shards"] == {"source": str(embedded_shards), "clips": 48, "encoded_rank0": 48,
                                      "bad_records": 0, "dropped_records": 0}
    assert shards["step_losses"] == files["step_losses"] and len(files["step_losses"]) == 3
    assert shards["eval_loss"] == files["eval_loss"] is not None  # valid clips are in no shard: read from files
    wa, wb = (load_file(str(tmp_path / r / "s/stage1/artifact/projector.safetensors")) for r in ("files", "shards"))
    assert wa.keys() == wb.keys() and wa and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_instructions_naming_clips_in_no_shard_give_one_line(embedded_instructions, embedded_shards, tmp_path, capsys):
    """The embedded instruction file names every keyword training clip; the shards hold 48 of them."""
    from recipes.cli import main

    argv = ["train-alm", "--config", str(REPO / "configs/alm/stage1.yaml"), f"data.root={embedded_instructions}",
            f"output_dir={tmp_path}", "audio.encoder=random:tiny", "train.max_steps=1", "data.qtypes=[keyword_word]",
            f"data.shards={embedded_shards}", "projector.stats_clips=8"]
    capsys.readouterr()
    assert main(argv) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if "error" in x]  # (the pass's progress bar aside)
    named = {r["audio_id"] for r in json.loads((embedded_instructions / "instructions/train.json").read_text())
             if r["qtype"] == "keyword_word"}
    assert len(err) == 1 and err[0].startswith(f"mosaic-alm train-alm: error: data.shards: {len(named) - 48} of the "
                                               f"{len(named)} clips the training instructions name "
                                               "are in no shard"), err
    assert "(e.g. audio_id '" in err[0]


def test_a_trainable_encoder_with_shards_is_refused_in_one_line(shard_root, embedded_shards, tmp_path, capsys):
    from recipes.cli import main

    capsys.readouterr()
    assert main(["train-alm", "--config", str(REPO / "configs/alm/stage1.yaml"), f"data.root={shard_root}",
                 f"output_dir={tmp_path}", "audio.encoder=random:tiny", "trainable.encoder=true",
                 f"data.shards={embedded_shards}"]) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and "data.shards: clips from shards reach the model through the frozen-encoder token " \
                              "cache; set trainable.encoder=false" in err[0], err


def _corrupt_one_clip(src: Path, dst: Path) -> str:
    """A copy of the shard folder whose shard 1 holds one clip with broken FLAC bytes; returns that clip's id."""
    shutil.copytree(src, dst)
    path = dst / "shard-000001.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad = next(m.name[:-5] for m, _ in members if m.name.endswith(".flac"))
    with tarfile.open(path, "w") as tar:
        for m, data in members:
            if m.name == f"{bad}.flac":
                data = b"fLaC" + bytes(len(data) - 4)
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return json.loads({m.name: d for m, d in members}[f"{bad}.json"])["id"]


def test_a_bad_record_is_skipped_quarantined_and_its_instructions_dropped(shard_root, embedded_shards, tmp_path):
    """A clip with broken FLAC bytes: skipped and listed once in the rank's quarantine file; the instructions that
    name it are dropped and the stage trains on the other 47 clips."""
    from recipes.train_alm import train_stage

    bad_id = _corrupt_one_clip(embedded_shards, tmp_path / "shards")
    out = train_stage(_cfg(shard_root, tmp_path / "run", steps=1, **{"data.shards": tmp_path / "shards",
                                                                    "train.eval_batches": 0, "train.num_workers": 2}),
                      quiet=True)  # two loader workers read the shards (and the instructions)
    named = sum(r["audio_id"] == bad_id for r in json.loads((shard_root / "instructions/train.json").read_text()))
    assert named >= 1 and out["train_records"] == 48 - named
    assert out["train_shards"] == {"source": str(tmp_path / "shards"), "clips": 47, "encoded_rank0": 47,
                                   "bad_records": 1, "dropped_records": named}
    lines = [json.loads(x) for x in (tmp_path / "run/s/stage1/quarantine.rank0.jsonl").read_text().splitlines()]
    assert [(x["id"], x["shard"]) for x in lines] == [(bad_id, "shard-000001.tar")]
    assert "cannot decode FLAC" in lines[0]["error"]


def _pass_on_rank(rank, world, rendezvous, shards, cache, out):
    import os

    import torch.distributed as dist

    from encoder.hf import resolve_encoder
    from mosaic_alm.featurizer import AudioFeaturizer
    from mosaic_alm.stage_data import _all_gather

    os.environ["MOSAIC_ALM_PRECISION"] = "fp32"
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    torch.manual_seed(0)
    feats = AudioFeaturizer(resolve_encoder("random:tiny").eval(), 256, cache_dir=cache)
    ids = _shard_ids(Path(shards))
    keys, bad, encoded = feats.precompute_shards(shards, ids[::2], rank=rank, world=world, gather=_all_gather(world),
                                                 progress=False)
    for i, k in keys.items():
        feats.alias(f"clip:{i}", k)
    tokens = feats.tokens([f"clip:{i}" for i in sorted(keys)])
    Path(out, f"rank{rank}.json").write_text(json.dumps({"keys": keys, "bad": bad, "encoded": encoded,
                                                         "encoder_runs": feats.encoded, "sum": float(tokens.sum())}))
    dist.barrier()  # both ranks done before teardown (gloo can abort a rank that exits first)
    dist.destroy_process_group()


def test_two_ranks_split_the_pass_and_share_the_cache(embedded_shards, tmp_path):
    """2 ranks, 8 shards: each reads 4, encodes only the named clips in them (every other one, 24 in all); both end
    with every key and serve every clip's tokens from the one cache folder (no encoder run after the pass)."""
    mp.spawn(_pass_on_rank, args=(2, tmp_path / "rdzv", str(embedded_shards), tmp_path / "cache", tmp_path),
             nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    ids = _shard_ids(embedded_shards)
    assert r0["keys"] == r1["keys"] and sorted(r0["keys"]) == sorted(ids[::2]) and len(set(r0["keys"].values())) == 24
    assert r0["encoded"] + r1["encoded"] == 24 and r0["encoded"] == r1["encoded"] == 12
    assert r0["encoder_runs"] == r0["encoded"] and r1["encoder_runs"] == r1["encoded"]
    assert r0["bad"] == r1["bad"] == [] and r0["sum"] == r1["sum"]
