#!/usr/bin/env bash
# Install (scripts/setup.sh) and run the test suite. Extra arguments go to pytest, e.g. --run-slow.
# The embedded small data profile is built on first use (cached under data/embedded-small).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "[test] pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
