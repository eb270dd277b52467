#!/usr/bin/env bash
# Set everything up, build the bundled demo data (shards, quarantine, report, manifest), then train.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DS_ACCELERATOR=cpu RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false
OUT="${OUT:-demo-out}"
.venv/bin/parsit-data build examples/demo/mixture.yaml --image-root examples/demo/images \
  --tokenizer qwen3 --template qwen_1_5 --out "$OUT/build" --overwrite
