"""Every JSON under results/ names the commit behind it (issue 24).

A JSON names its commit where the run recorded one (``git.commit`` from ``eval.results.write_results``,
``versions.commit`` from the ALM experiment, or a top-level ``commit``) or, for a JSON whose run recorded none, where
``provenance.commit_added`` holds the commit that added the file to the repository (the run predates it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "results"
_SHA = re.compile(r"[0-9a-f]{7,40}")


def _commit(d) -> str | None:
    """The commit a results JSON names, or None."""
    if not isinstance(d, dict):
        return None
    candidates = [d.get("commit")]
    for key, field in (("git", "commit"), ("versions", "commit"), ("provenance", "commit_added")):
        if isinstance(d.get(key), dict):
            candidates.append(d[key].get(field))
    for c in candidates:
        if isinstance(c, str) and _SHA.match(c):
            return c
    return None


def test_every_results_json_names_its_commit():
    files = sorted(RESULTS.rglob("*.json"))
    assert files, "no JSON under results/"
    missing = [str(f.relative_to(RESULTS)) for f in files if _commit(json.loads(f.read_text())) is None]
    assert not missing, f"results JSONs that name no commit (add provenance.commit_added): {missing}"


@pytest.mark.parametrize(
    "payload, named",
    [
        ({"git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False}}, True),
        ({"versions": {"commit": "0123456789abcdef"}}, True),
        ({"commit": "2050085 (HEAD when the run started)"}, True),
        ({"provenance": {"commit_added": "abcdef0123456", "note": "added-in"}}, True),
        ({"git": {"commit": None}}, False),
        ({"numbers": {"accuracy": 0.5}}, False),
        ({"provenance": {"note": "no commit"}}, False),
        ([1, 2], False),
    ],
)
def test_the_check_can_fail(payload, named):
    assert (_commit(payload) is not None) is named
