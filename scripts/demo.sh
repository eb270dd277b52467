#!/usr/bin/env bash
# Set everything up, build the bundled demo data (shards, quarantine, report, manifest), then run a
# short CPU training on it (2 processes, DeepSpeed ZeRO 2, gloo) that prints a falling loss and writes
# checkpoints and a Hugging Face export.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DS_ACCELERATOR=cpu RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false
OUT="${OUT:-demo-out}"

echo; echo "== 1/2 build: examples/demo -> $OUT/build"
.venv/bin/parsit-data build examples/demo/mixture.yaml --image-root examples/demo/images \
  --tokenizer qwen3 --template qwen_1_5 --out "$OUT/build" --overwrite

echo; echo "== 2/2 train: tiny SigLIP + projector + Qwen3 on $OUT/build (CPU, 2 processes, ZeRO 2)"
.venv/bin/parsit-train launch --config examples/train_demo.yaml --nproc 2 --timeout 900 \
  --set output_dir="$OUT/train" --set "data.builds=[$OUT/build]"

echo
echo "report:      $OUT/build/report.html"
echo "quarantine:  $OUT/build/quarantine.jsonl"
echo "checkpoints: $OUT/train"
echo "look at one row:  .venv/bin/parsit-data inspect $OUT/build --id demo-001"
