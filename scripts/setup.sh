#!/usr/bin/env bash
# Installs everything this project needs on a fresh Debian/Ubuntu machine:
# system packages (apt), a virtualenv in .venv with the project and its extras.
# Idempotent: run it again after pulling.
set -euo pipefail
cd "$(dirname "$0")/.."

# espeak-ng: Indian-language TTS and test speech; chromium: the browser tests;
# nginx, redis-server, prometheus (with promtool): the deployment tests run the real
# servers on loopback (tests/deploy_stack.py); openssl: nginx/make-cert.sh
APT_PACKAGES=(espeak-ng chromium nginx redis-server prometheus openssl)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "==> apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip wheel
EXTRAS=${RTMEDIA_EXTRAS:-models,media,avatar,wav2lip,vision,dev}
echo "==> pip install -e .[$EXTRAS] (llama-cpp-python compiles once, ~7 min; pip caches the wheel)"
# A portable llama.cpp build: the cached wheel then works on any x86-64 machine.
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" python -m pip install -q -e ".[$EXTRAS]"
echo "==> ready: . .venv/bin/activate"
