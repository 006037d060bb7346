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
