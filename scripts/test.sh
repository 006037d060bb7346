#!/usr/bin/env bash
# Install (scripts/setup.sh), lint (ruff) and run the test suite. Extra arguments go to pytest, e.g. --run-slow.
# The embedded small data profile is built on first use (cached under data/embedded-small).
# Tests run in file order (-p no:randomly); random order is a check of its own, with the seed it reports:
#   bash scripts/test.sh -p randomly --randomly-seed=N      (N: any integer, or `last` to repeat the last one)
# and every test file alone, each on a fresh copy of the data: .venv/bin/python scripts/test_each_file.py
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# lint first ([tool.ruff] in pyproject.toml): a violation fails the test command before any test runs
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -q -p no:randomly "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "[test] pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
