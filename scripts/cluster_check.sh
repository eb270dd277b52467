#!/usr/bin/env bash
# Prove the Docker images on this machine: a Ray cluster of containers runs `parsit-data build` as a Ray
# job (also with a worker container killed mid-job) with the same bytes as a local build, and the trainer
# image trains the demo. See docs/RAY.md ("Checked on a real cluster of containers") and --help.
set -Eeuo pipefail

usage() {
  cat <<'EOF'
usage: scripts/cluster_check.sh [options]

Builds docker/Dockerfile.ray and docker/Dockerfile.train (CPU) on a locally made Debian bookworm base
(debootstrap; no registry of images needed), starts a Ray head and 2 worker containers, submits
`parsit-data build --engine ray` from this host with `ray job submit`, compares the result with an
`--engine local` build (shards, quarantine, manifest without timing: byte for byte), submits it again
and kills one worker container mid-job, then trains the demo for 20 steps on 2 gloo ranks inside the
trainer image. Prints a table and, when all three hold, the line
  cluster: job output identical to local (I), survived a killed worker (K), trainer image trained (T)

Networking: every container and build uses the host network; each Ray process listens on its own
loopback port. If this script starts dockerd, it starts it as
  dockerd --bridge=none --iptables=false --ip-masq=false
and stops it at the end. Containers reach the package registries through the host's CA bundle and pip
index settings, copied into the base image.

options:
  --records N        generated text records on top of the demo data (default 6000; sizes the jobs)
  --shard-rows N     input records per partition (default 250)
  --keep-images      keep the Ray and trainer images (a layer cache: a second run rebuilds nothing)
  --drop-base        also remove the cached base image and its tarball at the end
  --no-train         skip the trainer image
  --install          install docker.io and debootstrap with apt-get when missing (root)
  --cache-dir DIR    where the base image tarball is kept between runs
                     (default ${XDG_CACHE_HOME:-~/.cache}/parsit/cluster-check)
  --workdir DIR      scratch folder (default: a new temp dir, removed at the end)
  -h, --help         this text

Exit status: 0 when everything holds or when the check cannot run here (it then prints
`cluster_check: SKIP: <why>`); 1 when something failed. Every step has a timeout; every container and
image this run made is removed at exit, also after a failure (the base image is kept as a cache unless
--drop-base).
EOF
}

REPO="$(cd "$(dirname "$0")/.." && pwd)"
RECORDS=6000 SHARD_ROWS=250 KEEP_IMAGES=0 DROP_BASE=0 TRAIN=1 INSTALL=0 WORK="" CACHE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --records) RECORDS="$2"; shift 2 ;;
    --shard-rows) SHARD_ROWS="$2"; shift 2 ;;
    --keep-images) KEEP_IMAGES=1; shift ;;
    --drop-base) DROP_BASE=1; shift ;;
    --no-train) TRAIN=0; shift ;;
    --install) INSTALL=1; shift ;;
    --cache-dir) CACHE="$2"; shift 2 ;;
    --workdir) WORK="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "cluster_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

PY="${PYTHON:-$REPO/.venv/bin/python}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's parsit_data (digests, data)
RAY_CLI="$(dirname "$PY")/ray"
CACHE="${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/parsit/cluster-check}"
RUN="pcc$$"
BASE_IMAGE="parsit-local/bookworm-python:3.11"
RAY_IMAGE="parsit-ray:cluster-check"
TRAIN_IMAGE="parsit-train:cluster-check-cpu"
export DOCKER_BUILDKIT=0   # the classic builder: no buildx plugin needed, --network host for RUN steps

skip() { echo "cluster_check: SKIP: $*"; exit 0; }
say() { printf '\n== %s  [%s]\n' "$*" "$(date -u +%H:%M:%S)"; }
die() { echo "cluster_check: FAILED: $*" >&2; exit 1; }

# --- what can run here --------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || skip "needs root (it runs dockerd, debootstrap and containers)"
if ! command -v docker >/dev/null || ! command -v debootstrap >/dev/null || ! command -v dockerd >/dev/null; then
  if [ "$INSTALL" = 1 ] && command -v apt-get >/dev/null; then
    say "installing docker.io and debootstrap"
    timeout 900 bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap' \
      >/dev/null || skip "apt-get could not install docker.io and debootstrap"
  else
    skip "docker/dockerd or debootstrap is missing (apt-get install docker.io debootstrap, or pass --install)"
  fi
fi
[ -x "$PY" ] || skip "no Python environment at $PY (scripts/setup.sh makes .venv; or set PYTHON)"
"$PY" -c "import ray, parsit_data" 2>/dev/null || skip "$PY lacks ray or parsit (scripts/setup.sh)"
[ -x "$RAY_CLI" ] || skip "no ray command next to $PY"
timeout 20 curl -fsS -o /dev/null https://pypi.org/simple/pip/ \
  || skip "cannot reach https://pypi.org from this host: the images install their packages from it"

# --- cleanup, whatever happens --------------------------------------------------------------------------
CONTAINERS=() IMAGES=() PIDS=() STARTED_DOCKERD="" OWN_WORK=0 IMAGES_BEFORE=""
kill_tree() {  # kill_tree PID: a process this script started, and its descendants
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$c"; done
  kill -TERM "$1" 2>/dev/null
}
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  for p in $(ps -o pid= --ppid $$ 2>/dev/null); do kill_tree "$p"; done  # a step still running (interrupted)
  for c in "${CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
  if [ "$KEEP_IMAGES" = 0 ]; then
    for i in "${IMAGES[@]}"; do docker rmi -f "$i" >/dev/null 2>&1; done
    # Layers a failed build left untagged: every image id that appeared during this run, but the base.
    if [ -n "$IMAGES_BEFORE" ]; then
      base_id="$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null)"
      for i in $(docker images -aq --no-trunc 2>/dev/null); do
        grep -qx "$i" <<<"$IMAGES_BEFORE" || [ "$i" = "$base_id" ] || docker rmi -f "$i" >/dev/null 2>&1
      done
    fi
  fi
  if [ "$DROP_BASE" = 1 ]; then docker rmi -f "$BASE_IMAGE" >/dev/null 2>&1; rm -f "$CACHE"/base-*.tar; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  if [ -n "$STARTED_DOCKERD" ]; then
    kill "$STARTED_DOCKERD" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 1; done
  fi
  [ "$OWN_WORK" = 1 ] && rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "$WORK" ]; then WORK="$(mktemp -d "${TMPDIR:-/tmp}/parsit-cluster-check.XXXXXX")"; OWN_WORK=1; fi
mkdir -p "$WORK" "$CACHE"
DATA="$WORK/data"

# --- dockerd: the running one, or one started here without a bridge ------------------------------------
if ! timeout 20 docker info >/dev/null 2>&1; then
  say "starting dockerd (no bridge, no iptables)"
  dockerd --bridge=none --iptables=false --ip-masq=false >"$WORK/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 60); do timeout 5 docker info >/dev/null 2>&1 && break; sleep 1; done
  timeout 10 docker info >/dev/null 2>&1 || { tail -5 "$WORK/dockerd.log"; skip "dockerd does not start here (log above)"; }
fi

IMAGES_BEFORE="$(docker images -aq --no-trunc)"
declare -A T  # seconds per step, for the table
LIMIT=600
timed() {  # timed NAME TIMEOUT_S CMD...: run with a timeout (a function: its commands use $LIMIT), record the seconds
  local name=$1 t0=$SECONDS rc=0
  LIMIT=$2; shift 2
  # In the background + wait: a signal to this script interrupts the wait, and cleanup stops the step.
  if declare -F "$1" >/dev/null; then "$@" & else timeout "$LIMIT" "$@" & fi
  wait $! || rc=$?
  [ "$rc" = 0 ] || die "$name failed or passed its ${LIMIT}s timeout (exit $rc)"
  T[$name]=$((SECONDS - t0))
}

# --- 1. the base image: debootstrap bookworm + python3.11, cached as a tarball --------------------------
MIRROR="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
PIP_CONF="[global]
cert = /etc/ssl/certs/ca-certificates.crt
default-timeout = 180
disable-pip-version-check = 1
index-url = ${PIP_INDEX_URL:-https://pypi.org/simple}
extra-index-url = ${PIP_INDEX_URL:-https://pypi.org/simple}"
RECIPE="bookworm minbase python3 python3-venv python-is-python3 ca-certificates|$PIP_CONF|$(sha256sum /etc/ssl/certs/ca-certificates.crt)"
BASE_TAR="$CACHE/base-$(printf '%s' "$RECIPE" | sha256sum | cut -c1-12).tar"
make_base() {
  local rootfs="$WORK/rootfs"
  timeout "$LIMIT" debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; return 1; }
  # The host's trust and index settings, so that pip and apt in the images reach the registries as it does.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  printf '%s\n' "$PIP_CONF" >"$rootfs/etc/pip.conf"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . >"$BASE_TAR.part" && mv "$BASE_TAR.part" "$BASE_TAR"
  rm -rf "$rootfs"
}
say "1/6 base image $BASE_IMAGE"
if [ ! -s "$BASE_TAR" ]; then timed base_debootstrap 900 make_base; else T[base_debootstrap]=cached; echo "cached: $BASE_TAR"; fi
if [ "$(docker image inspect -f '{{index .Config.Labels "parsit.recipe"}}' "$BASE_IMAGE" 2>/dev/null)" != "$(basename "$BASE_TAR")" ]; then
  timed base_import 300 docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["bash"]' \
    -c "LABEL parsit.recipe=$(basename "$BASE_TAR")" "$BASE_TAR" "$BASE_IMAGE" >/dev/null
else
  T[base_import]=cached
fi

# --- 2. the Ray image: docker/Dockerfile.ray on that base ---------------------------------------------
context() {  # what docker/Dockerfile.*.dockerignore lets through, as a tar on stdout
  tar -C "$REPO" -c --exclude=__pycache__ pyproject.toml README.md parsit_data parsit_train docker
}
say "2/6 Ray image $RAY_IMAGE"
IMAGES+=("$RAY_IMAGE")
build_ray() { context | timeout "$LIMIT" docker build --force-rm --network host -f docker/Dockerfile.ray --build-arg BASE="$BASE_IMAGE" -t "$RAY_IMAGE" - >"$WORK/build-ray.log" 2>&1 || { tail -30 "$WORK/build-ray.log"; return 1; }; }
timed ray_image_build 1800 build_ray
RAY_IN_IMAGE="$(timeout 120 docker run --rm --network host "$RAY_IMAGE" python -c 'import ray; print(ray.__version__)')"
RAY_HERE="$("$PY" -c 'import ray; print(ray.__version__)')"
[ "$RAY_IN_IMAGE" = "$RAY_HERE" ] || die "the image has Ray $RAY_IN_IMAGE, this host $RAY_HERE: a job submission needs the same"

# --- 3. data: the demo (images, quarantine cases) plus generated text records ---------------------------
say "3/6 data: demo + $RECORDS generated records"
mkdir -p "$DATA/in"
cp -r "$REPO/examples/demo/images" "$REPO/examples/demo/conversations.jsonl" "$REPO/examples/demo/captions.json" "$DATA/in/"
"$PY" - "$DATA/in/generated.jsonl" "$RECORDS" <<'EOF'
import json, random, sys
rng = random.Random(0)
words = "the report shows revenue growth margin table figure page chart quarter year total cost value".split()
def sent(a, b): return " ".join(rng.choice(words) for _ in range(rng.randint(a, b))).capitalize() + "."
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        turns = []
        for _ in range(rng.randint(1, 3)):
            turns += [{"from": "human", "value": sent(5, 25)}, {"from": "gpt", "value": sent(6, 60)}]
        if i % 97 == 0:
            turns[-1]["value"] = ""  # empty_turn: quarantined
        f.write(json.dumps({"id": f"gen-{i}", "conversations": turns}) + "\n")
EOF
chmod -R a+rwX "$DATA"  # the images run as uid 1000
BUILD_ARGS="/data/in/conversations.jsonl /data/in/captions.json /data/in/generated.jsonl --image-root /data/in/images --tokenizer qwen3 --template qwen_1_5 --shard-rows $SHARD_ROWS"

say "    local build (--engine local, in the Ray image)"
CONTAINERS+=("$RUN-local")
timed local_build 900 docker run --name "$RUN-local" --rm --network host -e RAY_AUTH_MODE=disabled -v "$DATA:/data" \
  "$RAY_IMAGE" parsit-data build $BUILD_ARGS --out /data/out-local --engine local -q

# --- 4. the cluster: a head and two workers, host network, own ports and temp dirs ----------------------
free_base() {  # a port base with PORT..PORT+399 free on loopback
  "$PY" - <<'EOF'
import random, socket
for _ in range(50):
    base = random.randrange(20000, 60000 - 400, 10)
    try:
        socks = []
        for p in range(base, base + 400):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        print(base); break
    except OSError:
        pass
    finally:
        for s in socks: s.close()
EOF
}
P="$(free_base)"; [ -n "$P" ] || die "no free loopback port range"
GCS=$P DASH=$((P + 1)) CLIENT=$((P + 2))
node_ports() {  # node_ports N: the ports of node N (0 head, 1-2 workers), 100 apart
  local b=$((P + 100 * ($1 + 1)))
  echo "--node-manager-port $b --object-manager-port $((b + 1)) --metrics-export-port $((b + 2))" \
    "--dashboard-agent-listen-port $((b + 3)) --dashboard-agent-grpc-port $((b + 4)) --runtime-env-agent-port $((b + 5))" \
    "--min-worker-port $((b + 10)) --max-worker-port $((b + 99))"
}
RAY_COMMON="--node-ip-address 127.0.0.1 --object-store-memory 150000000 --disable-usage-stats --block"
run_node() {  # run_node NAME N ARGS...
  local name=$1 n=$2; shift 2
  CONTAINERS+=("$name")
  timeout 120 docker run -d --name "$name" --network host --shm-size 400m -e RAY_AUTH_MODE=disabled -v "$DATA:/data" \
    "$RAY_IMAGE" ray start $RAY_COMMON --temp-dir "/tmp/ray-$name" $(node_ports "$n") "$@" >/dev/null
}
say "4/6 cluster: head (0 CPUs) + 2 workers (1 CPU each) on 127.0.0.1:$GCS, dashboard :$DASH"
t0=$SECONDS
run_node "$RUN-head" 0 --head --port "$GCS" --num-cpus 0 --ray-client-server-port "$CLIENT" \
  --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASH"
for _ in $(seq 90); do timeout 5 curl -fsS "http://127.0.0.1:$DASH/api/version" >/dev/null 2>&1 && break; sleep 1; done
run_node "$RUN-w1" 1 --address "127.0.0.1:$GCS" --num-cpus 1
run_node "$RUN-w2" 2 --address "127.0.0.1:$GCS" --num-cpus 1
alive() {  # nodes alive, from the dashboard's state API
  timeout 30 "$PY" -c "from ray.util.state import list_nodes
print(sum(n.state == 'ALIVE' for n in list_nodes(address='http://127.0.0.1:$DASH')))" 2>/dev/null || echo 0
}
for _ in $(seq 60); do [ "$(alive)" = 3 ] && break; sleep 3; done
[ "$(alive)" = 3 ] || { docker logs "$RUN-w1" 2>&1 | tail -20; die "the workers did not join the head in 180 s"; }
T[cluster_start]=$((SECONDS - t0))

export RAY_AUTH_MODE=disabled
submit() {  # submit ID OUT: a build job, from this host
  timeout 120 "$RAY_CLI" job submit --address "http://127.0.0.1:$DASH" --submission-id "$1" --no-wait -- \
    parsit-data build $BUILD_ARGS --out "$2" --engine ray >/dev/null
}
status() {  # the job's status from the job server's REST API (what `ray job status` asks)
  { timeout 20 curl -fsS "http://127.0.0.1:$DASH/api/jobs/$1" 2>/dev/null || true; } \
    | grep -oE '"status": *"[A-Z]+"' | grep -oE '[A-Z]+' | head -1 || true
}
wait_job() {  # wait_job ID TIMEOUT_S: SUCCEEDED or fail
  local st="" end=$((SECONDS + $2))
  while [ $SECONDS -lt $end ]; do
    st="$(status "$1")"
    case "$st" in SUCCEEDED) return 0 ;; FAILED|STOPPED) break ;; esac
    sleep 2
  done
  timeout 60 "$RAY_CLI" job logs --address "http://127.0.0.1:$DASH" "$1" 2>&1 | tail -30
  die "job $1 ended $st"
}
digest() {  # the bytes that must not depend on the engine: shards, quarantine, manifest without timing
  "$PY" - "$1" <<'EOF'
import hashlib, json, sys
from pathlib import Path
from parsit_data.format import build_files
f = build_files(Path(sys.argv[1]))
h = hashlib.sha256()
for p in sorted(f.shards.iterdir()):
    h.update(p.name.encode() + p.read_bytes())
h.update(f.quarantine.read_bytes())
m = json.loads(f.manifest.read_text())
m.pop("timing", None)
h.update(json.dumps(m, sort_keys=True).encode())
print(h.hexdigest())
EOF
}

say "5/6 Ray job from the host: ray job submit -- parsit-data build ... --engine ray"
t0=$SECONDS
submit "$RUN-job1" /data/out-ray
wait_job "$RUN-job1" 900
T[job_wall]=$((SECONDS - t0))
LOCAL_DIGEST="$(digest "$DATA/out-local")"
RAY_DIGEST="$(digest "$DATA/out-ray")"
SHARDS="$(ls "$DATA/out-ray/shards" | wc -l)"
if [ "$LOCAL_DIGEST" = "$RAY_DIGEST" ]; then I=yes; else I=no; fi
echo "local ${LOCAL_DIGEST:0:16}  ray ${RAY_DIGEST:0:16}  ($SHARDS shards)  identical: $I"

say "    again, killing worker container $RUN-w2 mid-job"
t0=$SECONDS
submit "$RUN-job2" /data/out-kill
KILLED=no
for _ in $(seq 600); do
  n=$(ls "$DATA/out-kill/_parts" 2>/dev/null | grep -c '^part-' || true)
  if [ "$n" -ge 1 ]; then
    st="$(status "$RUN-job2")"
    if [ "$st" = RUNNING ] && [ "$n" -lt "$SHARDS" ]; then
      docker kill "$RUN-w2" >/dev/null && KILLED="yes (after $n of $SHARDS partitions)"
    fi
    break
  fi
  sleep 0.2
done
echo "worker killed: $KILLED"
wait_job "$RUN-job2" 900
T[job_wall_killed]=$((SECONDS - t0))
timeout 60 "$RAY_CLI" job logs --address "http://127.0.0.1:$DASH" "$RUN-job2" >"$WORK/job2.log" 2>&1 || true
grep -E "was lost|attempt [0-9]+ of" "$WORK/job2.log" | sed 's/^/  job log: /' | head -4 || true
KILL_DIGEST="$(digest "$DATA/out-kill")"
if [ "${KILLED:0:3}" = yes ] && [ "$KILL_DIGEST" = "$LOCAL_DIGEST" ]; then K=yes; else K=no; fi
echo "after the kill: ${KILL_DIGEST:0:16}  identical to local: $K"
for c in "$RUN-head" "$RUN-w1" "$RUN-w2"; do docker rm -f "$c" >/dev/null 2>&1 || true; done

# --- 6. the trainer image (CPU base, CPU torch) trains the demo on 2 gloo ranks -----------------------
TR=skipped
if [ "$TRAIN" = 1 ]; then
  say "6/6 trainer image $TRAIN_IMAGE (CPU) and the demo training in it"
  IMAGES+=("$TRAIN_IMAGE")
  TORCH_ARGS=()
  TORCH_VERSION="$(sed -n 's/^ARG TORCH_VERSION=//p' "$REPO/docker/Dockerfile.train")"
  WHEEL="$(ls /opt/wheels/torch-"$TORCH_VERSION"+cpu-cp311-*.whl 2>/dev/null | head -1 || true)"
  if [ -n "$WHEEL" ]; then
    # This host keeps the CPU wheel on disk: serve it as a one-package index on loopback.
    mkdir -p "$WORK/torch-index/simple/torch"
    ln -sf "$WHEEL" "$WORK/torch-index/simple/torch/"
    # A fixed port if free: the index URL is a build argument, part of the layer cache's key.
    TP=39017
    "$PY" -c "import socket; socket.socket().bind(('127.0.0.1', $TP))" 2>/dev/null || TP=$((P + 5))
    "$PY" -m http.server --bind 127.0.0.1 "$TP" --directory "$WORK/torch-index" >"$WORK/torch-index.log" 2>&1 &
    PIDS+=($!)
    TORCH_ARGS=(--build-arg "TORCH_INDEX=http://127.0.0.1:$TP/simple")
  else
    TORCH_ARGS=(--build-arg "TORCH_INDEX=https://download.pytorch.org/whl/cpu")
  fi
  build_train() { context | timeout "$LIMIT" docker build --force-rm --network host -f docker/Dockerfile.train --build-arg BASE="$BASE_IMAGE" \
    "${TORCH_ARGS[@]}" -t "$TRAIN_IMAGE" - >"$WORK/build-train.log" 2>&1 || { tail -30 "$WORK/build-train.log"; return 1; }; }
  timed train_image_build 2400 build_train
  CONTAINERS+=("$RUN-train")
  train_run() { timeout "$LIMIT" docker run --name "$RUN-train" --rm --network host --shm-size 1g \
    -e DS_ACCELERATOR=cpu -e HF_HUB_OFFLINE=1 -e RAY_AUTH_MODE=disabled -v "$DATA:/data" \
    -v "$REPO/examples/train_demo.yaml:/data-ro/train_demo.yaml:ro" "$TRAIN_IMAGE" \
    parsit-train launch --config /data-ro/train_demo.yaml --nproc 2 --timeout 800 \
    --set output_dir=/data/train --set "data.builds=[/data/out-ray]" >"$WORK/train.log" 2>&1 || { tail -30 "$WORK/train.log"; return 1; }; }
  timed train_run 900 train_run
  echo "training log, tail:"; tail -6 "$WORK/train.log"
  TR="$("$PY" - "$DATA/train" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
losses = [r["loss"] for r in rows if "loss" in r]
exported = [p for p in out.rglob("config.json") if "checkpoint" not in str(p)]
first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
ok = len(losses) >= 6 and last < first and bool(exported)
print(f"{'yes' if ok else 'no'} (loss {first:.3f} -> {last:.3f} over {len(losses)} steps, export {exported[0].parent if exported else 'missing'})")
EOF
)"
  echo "trained: $TR"
fi

# --- the table -------------------------------------------------------------------------------------------
size() { docker image inspect -f '{{.Size}}' "$1" 2>/dev/null | awk '{printf "%.0f MB", $1 / 1e6}'; }
echo
printf '%-34s %s\n' "what" "measured"
printf '%-34s %s\n' "----" "--------"
secs() { if [ "${T[$1]}" = cached ]; then echo "cached"; else echo "${T[$1]} s"; fi; }
READ="$("$PY" -c "import json,sys; print(sum(s['read'] for s in json.load(open(sys.argv[1]))['sources']))" "$DATA/out-local/manifest.json")"
printf '%-34s %s\n' "base image (debootstrap bookworm)" "$(size "$BASE_IMAGE"), debootstrap $(secs base_debootstrap), import $(secs base_import)"
printf '%-34s %s\n' "Ray image" "$(size "$RAY_IMAGE"), built in ${T[ray_image_build]} s (Ray $RAY_IN_IMAGE)"
[ "$TRAIN" = 1 ] && printf '%-34s %s\n' "trainer image (CPU)" "$(size "$TRAIN_IMAGE"), built in ${T[train_image_build]} s"
printf '%-34s %s\n' "local build (in the Ray image)" "${T[local_build]} s, $READ records in, $SHARDS shards"
printf '%-34s %s\n' "cluster start (head + 2 workers)" "${T[cluster_start]} s"
printf '%-34s %s\n' "Ray job wall time" "${T[job_wall]} s"
printf '%-34s %s\n' "Ray job, one worker killed" "${T[job_wall_killed]} s, killed: $KILLED"
printf '%-34s %s\n' "identical to local (I)" "$I"
printf '%-34s %s\n' "survived a killed worker (K)" "$K"
[ "$TRAIN" = 1 ] && printf '%-34s %s\n' "trainer image trained (T)" "$TR" && printf '%-34s %s\n' "trainer run" "${T[train_run]} s"
echo
[ "$I" = yes ] || die "the Ray job's output differs from the local build"
[ "$K" = yes ] || die "the job with a killed worker did not give the local build's bytes (killed: $KILLED)"
if [ "$TRAIN" = 1 ]; then
  [ "${TR:0:3}" = yes ] || die "the trainer image did not train: $TR"
  echo "cluster: job output identical to local (I), survived a killed worker (K), trainer image trained (T)"
else
  echo "cluster: job output identical to local (I), survived a killed worker (K); trainer image skipped (--no-train)"
fi
