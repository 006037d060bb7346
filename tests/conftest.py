"""Shared fixtures. Slow tests run only with ``--run-slow`` (or MOSAIC_ALM_SLOW=1)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    if config.getoption("--run-slow"):
        os.environ["MOSAIC_ALM_SLOW"] = "1"  # tests gated by the environment (full kill loop, long fuzz) see it
    # One torch thread in the test process whatever files are collected: the full run always had it (modules such as
    # test_reliability_*.py set it on import) and tests compare in-process results bit for bit with subprocesses
    # started with OMP_NUM_THREADS=1 (test_alm_resume), so a file run alone must have it too.
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("MOSAIC_ALM_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def embedded_root() -> Path:
    """The small profile of the embedded benchmark, built once (cached across sessions) and shared."""
    from encoder.data.embedded import build

    root = Path(os.environ.get("MOSAIC_ALM_DATA", REPO / "data" / "embedded-small"))
    build(root, profile="small", seed=0)
    return root


CORPUS_TEST_CLIPS = 512  # the unlabeled corpus the tests build beside the small profile (build-data's CLI test and
#                           the tiny pipeline's 2 pretraining steps of 256 ask for the same, so none rebuilds it)


@pytest.fixture(scope="session")
def embedded_corpus(embedded_root) -> Path:
    """``embedded_root`` with an unlabeled corpus of :data:`CORPUS_TEST_CLIPS` clips in ``unlabeled/`` (built once,
    reused); returns the corpus folder."""
    from encoder.data.corpus import build_corpus, corpus_dir

    build_corpus(embedded_root, CORPUS_TEST_CLIPS, seed=0)
    return corpus_dir(embedded_root)


@pytest.fixture(scope="session")
def embedded_instructions(embedded_root) -> Path:
    """``embedded_root`` with its instruction files (``instructions/{train,valid,test}.json`` and the keyword-over-
    background mixtures they name), written by ``mosaic_alm.instructions.generate(seed=0)`` when missing or older
    than the data (``build_info.json``); returns the data root. Every test that reads the instructions asks for it,
    so none depends on another test (``test_instructions``, ``make-instructions``) having written them first."""
    from mosaic_alm.instructions import generate

    needed = [embedded_root / "instructions" / f"{s}.json" for s in ("train", "valid", "test")]
    needed.append(embedded_root / "mixtures" / "manifest.jsonl")
    built = (embedded_root / "build_info.json").stat().st_mtime
    if any(not p.is_file() or p.stat().st_mtime < built for p in needed):
        generate(embedded_root, seed=0)
    return embedded_root


@pytest.fixture(autouse=True, scope="module")
def _torch_threads_per_module():
    """A module that changes torch's thread count (``torch.set_num_threads`` in a fixture or a test) gets it back at
    its end, so the modules after it run with the same threads whatever the order."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _torch_threads_per_test(_torch_threads_per_module):
    """The same for one test: what a test sets is undone after it (a module fixture's setting stays for its module)."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_alm_artifact(embedded_instructions, tmp_path_factory) -> Path:
    """A real ALM artifact: stage 1 (projector) trained for 2 steps on the embedded data with a random tiny encoder
    and the packaged SmolLM2 (the report gallery and the web demo run it)."""
    import torch

    from mosaic_core.config import load_config
    from recipes.train_alm import train_stage

    out = tmp_path_factory.mktemp("tiny-alm")
    cfg = load_config(REPO / "configs/alm/stage1.yaml", [
        f"data.root={embedded_instructions}", f"output_dir={out}", "name=tiny", "audio.encoder=random:tiny",
        "train.max_steps=2", "train.batch_size=2", "projector.stats_clips=8", "train.eval_batches=1",
        "train.warmup_ratio=0.0", "prompt.system=''", "train.ckpt_every=0"])
    torch.manual_seed(0)
    train_stage(cfg, quiet=True)
    return out / "tiny" / "stage1" / "artifact"


@pytest.fixture(scope="module")
def fp32_everywhere():
    """``auto`` precision means fp32 for this module (tests of exact equalities between two computations; bf16
    autocast, the default on CPUs with native bf16, is checked against fp32 by its own tests)."""
    before = os.environ.get("MOSAIC_ALM_PRECISION")
    os.environ["MOSAIC_ALM_PRECISION"] = "fp32"
    yield
    if before is None:
        os.environ.pop("MOSAIC_ALM_PRECISION", None)
    else:
        os.environ["MOSAIC_ALM_PRECISION"] = before


@pytest.fixture(scope="session")
def embedded_shards(embedded_root, tmp_path_factory) -> Path:
    """WebDataset shards of 48 real training clips of the embedded keyword task (8 shards of 6), written by the
    kit's converter (encoder.data.shards.write_shards); their index sits beside them."""
    from encoder.data.manifest import read_manifest
    from encoder.data.shards import write_shards

    rows = [r for r in read_manifest(embedded_root / "keywords" / "manifest.jsonl") if r["split"] == "train"][:48]
    out = tmp_path_factory.mktemp("embedded-shards")
    write_shards(rows, out, shard_size=6)
    return out
