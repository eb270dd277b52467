"""A real Ray head on loopback: `ray job submit -- parsit-data build` and `--ray-address` both work.

The head is started with ``ray start --head --block`` in its own session and stopped by signalling that
process (it takes its children down); leftovers of that session are killed by pid. ``ray stop`` is not
used: it would stop every Ray on this shared machine, not only ours.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import ray  # a test dependency: missing, the suite fails

from parsit_data.build import build
from parsit_data.config import BuildConfig

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"
RAY_BIN = Path(sys.executable).parent / "ray"
pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _session_pids(sid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: session id
                pids.append(int(d.name))
    return pids


@pytest.fixture(scope="module")
def ray_head():
    """A head on loopback with the job server (dashboard), 2 CPUs, every port chosen free."""
    gcs, dash, client, agent_http, agent_grpc, metrics, rt_env = _free_ports(7)
    temp = tempfile.mkdtemp(prefix="/tmp/prh-")  # short: Ray's unix socket paths must stay under 108 bytes
    assert RAY_BIN.exists(), f"the ray CLI is not at {RAY_BIN}: install the test extras (ray[default])"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{RAY_BIN.parent}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    log = open(Path(temp) / "head.log", "w")
    proc = subprocess.Popen(
        [str(RAY_BIN), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
         "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
         "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
         "--runtime-env-agent-port", str(rt_env), "--num-cpus", "2", "--temp-dir", temp,
         "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 150
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=5) as r:
                    json.loads(r.read())
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Ray head did not come up:\n{Path(temp, 'head.log').read_text()[-3000:]}")
                time.sleep(1)
        yield {"dashboard": url, "gcs": f"127.0.0.1:{gcs}", "env": env}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        time.sleep(1)
        for pid in _session_pids(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _outputs(out: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}
    files["quarantine.jsonl"] = (out / "quarantine.jsonl").read_bytes()
    m = json.loads((out / "manifest.json").read_text())
    m.pop("timing")
    files["manifest"] = json.dumps(m, sort_keys=True).encode()
    return files


@pytest.fixture(scope="module")
def local_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "b"
    build(BuildConfig(inputs=[str(DEMO / "mixture.yaml")], image_root=str(DEMO / "images"), out=str(out),
                      shard_rows=8, engine="local"))
    return out


@pytest.mark.timeout(420)
def test_ray_job_submit_runs_a_build(ray_head, local_build, tmp_path):
    out = tmp_path / "job-out"
    # The code travels with --working-dir; the data is named by absolute paths (as on a shared filesystem),
    # so that the manifest, which records input paths, can be compared byte for byte with a local build.
    cmd = [str(RAY_BIN), "job", "submit", "--address", ray_head["dashboard"], "--working-dir", str(REPO), "--",
           sys.executable, "-m", "parsit_data.cli.main", "build", str(DEMO / "mixture.yaml"),
           "--image-root", str(DEMO / "images"), "--out", str(out), "--shard-rows", "8", "--workers", "2"]
    proc = subprocess.run(cmd, cwd=REPO, env=ray_head["env"], capture_output=True, text=True, timeout=360)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "succeeded" in log
    # --engine auto inside a job picks Ray: the job gives its entrypoint RAY_ADDRESS.
    assert "engine: ray (auto: RAY_ADDRESS=" in log
    assert "49 records (40 kept, 9 quarantined)" in log
    assert _outputs(out) == _outputs(local_build)


@pytest.mark.timeout(300)
def test_ray_address_joins_the_running_cluster(ray_head, local_build, tmp_path):
    out = tmp_path / "joined"
    try:
        build(BuildConfig(inputs=[str(DEMO / "mixture.yaml")], image_root=str(DEMO / "images"), out=str(out),
                          shard_rows=8, engine="ray", ray_address=ray_head["gcs"], workers=2))
        assert not ray.is_initialized()  # the engine disconnects the driver it connected
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert _outputs(out) == _outputs(local_build)
