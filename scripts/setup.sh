#!/usr/bin/env bash
# Create .venv and install Parsit with everything the demo and the tests need. Idempotent.
# torch is pinned: torch==2.13.0 resolves to a CPU build here; an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
log=.venv/setup.log
echo "setup: installing torch==2.13.0 and parsit[train,test,demo] (log: $log)"
if ! { .venv/bin/python -m pip install --quiet "torch==2.13.0" \
       && .venv/bin/python -m pip install --quiet -e ".[train,test,demo]"; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "setup: pip install failed (full log: $log)" >&2
  exit 1
fi
# Headless Chromium renders report.html in the report test (Debian package; needs root and apt).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing chromium (apt) for the report rendering test"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >>"$log" 2>&1 \
    || echo "setup: could not install chromium; the report rendering test will fail and say so" >&2
elif ! command -v chromium >/dev/null 2>&1; then
  echo "setup: chromium is missing and this is not root: run 'sudo apt-get install -y chromium'" >&2
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch, transformers, deepspeed; print(f"torch {torch.__version__}, transformers {transformers.__version__}, deepspeed {deepspeed.__version__}")' 2>/dev/null))"
