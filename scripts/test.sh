#!/usr/bin/env bash
# Set everything up and run the whole test suite (offline, CPU only). .ci/run runs exactly this.
#   1. the pytest suite (pytest's exit code 5, no tests collected, fails on purpose);
#   2. the OneVision video export parity (issue 20): it needs torchvision, which does not import beside the
#      suite's torch, so scripts/video_parity.sh runs it in a side venv (~5.6 GB). A parity failure fails;
#      a machine where the side venv cannot be made (rc 3: disk, wheels) is reported, not fatal.
#      PARSIT_VIDEO_PARITY=0 skips it.
#   3. with PARSIT_CLUSTER_CHECK=1 (CI sets it): the container cluster check (issue 22; root, docker.io,
#      debootstrap): a Ray job on a head + 2 worker containers, host network only, a worker killed mid-job,
#      and the trainer image. Bounded and reported, not fatal (it needs Debian's mirror).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DS_ACCELERATOR=cpu RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false
set +e
timeout 2400 .venv/bin/python -m pytest -q --durations=15 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
if [ "${PARSIT_VIDEO_PARITY:-1}" != 0 ]; then
  echo "== video parity (scripts/video_parity.sh; PARSIT_VIDEO_PARITY=0 skips it)"
  set +e
  bash scripts/video_parity.sh
  rc=$?
  set -e
  if [ "$rc" -eq 3 ]; then
    echo "video_parity: could not make the side venv: reported, not fatal" >&2
  elif [ "$rc" -ne 0 ]; then
    exit "$rc"
  fi
fi
if [ "${PARSIT_CLUSTER_CHECK:-0}" = 1 ]; then
  echo "== cluster check (scripts/cluster_check.sh)"
  timeout -k 60 1800 bash scripts/cluster_check.sh --install --records 2000 \
    || echo "cluster_check: FAILED or timed out (rc $?): reported, not fatal; the test suite above passed" >&2
fi
exit 0
