#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv: CPU torch unless one is installed,
# the project in editable mode with its test extras, and the Debian tools the tests drive
# (git-lfs, headless Chromium). Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv" >&2
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  # Ask for the exact CPU build first so that no CUDA wheels are pulled onto a CPU machine.
  echo "[setup] installing torch" >&2
  pip install -q "torch==2.13.0" || pip install -q "torch>=2.4"
fi
# Re-install when pyproject.toml changed since the last install (a stamp in .venv remembers its hash).
stamp=.venv/.myassistant-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the project and its test tools" >&2
  pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
# llama.cpp in-process (k-quant export, tests/test_export_llama_cpp.py): built from source, so asked for:
# SETUP_LLAMA_CPP=1 (53 min on a busy 2-core machine; the multimodal part is left out).
if [ "${SETUP_LLAMA_CPP:-0}" = 1 ] && ! python -c "import llama_cpp" 2>/dev/null; then
  echo "[setup] building llama-cpp-python (llama.cpp from source)" >&2
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" pip install -q "llama-cpp-python>=0.3.16" \
    || echo "[setup] llama-cpp-python did not build: the llama_cpp tests are skipped" >&2
fi
need=()
command -v git-lfs >/dev/null || need+=(git-lfs)
if [ "${SETUP_BROWSER:-1}" = 1 ]; then
  command -v chromium >/dev/null || need+=(chromium)
  # CJK glyphs in the browser test's screenshots (the demo model answers Chinese questions too)
  fc-list :lang=zh 2>/dev/null | grep -q . || need+=(fonts-noto-cjk)
fi
# apt takes fcntl locks; `apt-get update` does not wait for its lists lock (DPkg::Lock::Timeout only
# covers dpkg's), so wait here until no other apt holds it (up to 10 min).
wait_for_apt_lists() {
  python3 - /var/lib/apt/lists/lock <<'PY'
import fcntl, sys, time
deadline = time.monotonic() + 600
with open(sys.argv[1], "a") as lock:
    while True:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"[setup] {sys.argv[1]} still held by another apt after 10 min")
            time.sleep(2)
PY
}
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] apt-get install ${need[*]}" >&2
    wait_for_apt_lists
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null || { wait_for_apt_lists; apt-get update -qq >/dev/null; }
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null
  else
    echo "[setup] please install: ${need[*]} (Debian/Ubuntu: sudo apt-get install ${need[*]})" >&2
  fi
fi
git lfs install --skip-repo >/dev/null 2>&1 || true
