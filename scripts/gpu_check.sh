#!/usr/bin/env bash
# The GPU check of the trainer (issue 14): one GPU, under 8 minutes.
#   scripts/gpu_check.sh                 # tiny + realistic (Qwen3-1.7B + SigLIP so400m shapes), ZeRO-2/3, bf16,
#                                        # sdpa (+ flash_attention_2 when flash_attn is installed)
#   scripts/gpu_check.sh --dry-run       # parse arguments, write the case configs, print the plan (no GPU)
#   scripts/gpu_check.sh --models tiny --zero 3 --steps 4
# Prints per case: step time with real shards vs the same step on one in-memory batch (the loader's share,
# target under 5%), peak GPU memory, tokens/s; then the packed-attention check (micro_batch_size 2 packs,
# sdpa and flash_attention_2: a sample's loss/logits in a pack vs alone). See benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py "$@"
