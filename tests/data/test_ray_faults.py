"""Ray fault tolerance, for real: a worker process killed with SIGKILL mid-build, a node removed from a
``ray.cluster_utils.Cluster`` (Ray's multi-node simulator, on this machine) mid-build, and a partition
that kills every worker it is given. The first two finish by themselves with the local engine's bytes;
the last is reported with its partition, its records and the cause, after the bounded retries.

Every test starts real Ray and has a timeout; the machine has 2 CPUs, so actors take half a CPU each.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import ray

from parsit_data.build import build
from parsit_data.config import BuildConfig
from parsit_data.engines import ray as ray_engine
from parsit_data.errors import ParsitError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_ray_left")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    """The demo mixture (images, rejections) and text records: ~20 partitions of 4 records."""
    d = tmp_path_factory.mktemp("ray-faults")
    lines = [json.dumps({"id": f"t-{i}", "conversations": [
        {"from": "human", "value": f"Question {i}: what does row {i % 7} say?"},
        {"from": "gpt", "value": f"Row {i % 7} says {'the total is ' * (i % 5 + 1)}{i * 13}."}]}) for i in range(40)]
    lines.insert(5, "{not json")
    (d / "text.jsonl").write_text("\n".join(lines) + "\n")
    return [str(DEMO / "mixture.yaml"), str(d / "text.jsonl")]


def _config(inputs, out: Path, **kw) -> BuildConfig:
    return BuildConfig(inputs=inputs, image_root=str(DEMO / "images"), out=str(out), shard_rows=4, **kw)


def _outputs(out: Path) -> dict[str, bytes]:
    files = {f"shards/{p.name}": p.read_bytes() for p in sorted((out / "shards").iterdir())}
    files["quarantine.jsonl"] = (out / "quarantine.jsonl").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("timing")
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    files["report.json"] = (out / "report.json").read_bytes()
    return files


@pytest.fixture(scope="module")
def local(inputs, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("local") / "b"
    build(_config(inputs, out, engine="local"))
    return _outputs(out)


def _kill_after_first(kill) -> callable:
    done = []

    def on_progress(result):
        done.append(result.index)
        if len(done) == 1:
            kill()

    return on_progress


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_build_is_replaced_and_the_bytes_match_local(inputs, local, tmp_path):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024 * 1024)
    out = tmp_path / "b"
    killed = []

    def kill():
        pid = ray_engine.WORKER_PIDS[0]
        os.kill(pid, signal.SIGKILL)  # what the OOM killer or a spot preemption does
        killed.append(pid)

    build(_config(inputs, out, engine="ray", workers=2), on_progress=_kill_after_first(kill))
    assert killed and ray_engine.LAST_RUN["retries"] >= 1 and ray_engine.LAST_RUN["workers_replaced"] >= 1
    assert _outputs(out) == local
    assert not [p for p in (out / "shards").iterdir() if ".tmp-" in p.name]


@pytest.mark.timeout(300)
def test_a_node_removed_mid_build_costs_nothing_but_time(inputs, local, tmp_path):
    from ray.cluster_utils import Cluster

    fast_death = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                  "health_check_initial_delay_ms": 0}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 100 * 1024 * 1024, "_system_config": fast_death})
    try:
        worker_node = cluster.add_node(num_cpus=1, object_store_memory=100 * 1024 * 1024)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        out = tmp_path / "b"
        # Half of the head's CPU is taken, so one build worker must run on the second node; when that
        # node goes, the half is given back for the replacement.
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        @ray.remote(num_cpus=0.5)
        class Placeholder:
            def ok(self):
                return True

        head_id = ray.get_runtime_context().get_node_id()
        hold = Placeholder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head_id, soft=False)).remote()
        assert ray.get(hold.ok.remote())

        def lose_node():
            ray.kill(hold)
            cluster.remove_node(worker_node, allow_graceful=False)
            # Until Ray has noticed (health checks), the node's worker processes may still answer: the
            # build goes on only once the cluster has declared the node dead, as a real node loss does.
            deadline = time.monotonic() + 60
            while any(n["NodeID"] == worker_node.node_id and n["Alive"] for n in ray.nodes()):
                assert time.monotonic() < deadline, "Ray never noticed the node was gone"
                time.sleep(0.2)

        build(_config(inputs, out, engine="ray", workers=2), on_progress=_kill_after_first(lose_node))
        assert ray_engine.LAST_RUN["retries"] >= 1
        assert _outputs(out) == local
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.timeout(300)
def test_a_partition_that_keeps_killing_its_worker_is_reported_after_the_retries(inputs, tmp_path, monkeypatch):
    class Crashing(ray_engine._Worker):
        def process(self, part):
            if part.index == 2:
                os._exit(1)  # the process dies, every time this partition runs
            return super().process(part)

    monkeypatch.setattr(ray_engine, "_Worker", Crashing)
    monkeypatch.setattr(ray_engine, "MAX_ATTEMPTS", 2)
    monkeypatch.setattr(ray_engine, "RETRY_BACKOFF_S", 0.1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024 * 1024)
    out = tmp_path / "b"
    with pytest.raises(ParsitError) as err:
        build(_config(inputs, out, engine="ray", workers=2))
    msg = str(err.value)
    assert "partition 2 (source 'conversations', lines " in msg and "was lost with its Ray worker 2 times" in msg
    assert "last cause: " in msg and "run the same command again to resume" in msg
    assert not (out / "manifest.json").exists()
    assert (out / "_parts" / "part-00000.json").exists()  # the partitions that finished are kept


@pytest.mark.timeout(300)
def test_a_bug_in_the_worker_is_raised_as_the_workers_own_exception_not_retried(inputs, tmp_path, monkeypatch):
    class Buggy(ray_engine._Worker):
        calls = 0

        def process(self, part):
            if part.index == 1:
                return {}["no such key"]  # a bug: KeyError, on the worker
            return super().process(part)

    monkeypatch.setattr(ray_engine, "_Worker", Buggy)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024 * 1024)
    with pytest.raises(KeyError) as err:
        build(_config(inputs, tmp_path / "b", engine="ray", workers=2))
    assert type(err.value) is KeyError  # the worker's own type, not Ray's wrapper or a ParsitError
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "partition 1 (source 'conversations'" in notes
    assert "File \"" in notes and "in process" in notes and "KeyError: 'no such key'" in notes  # its traceback
    assert ray_engine.LAST_RUN["retries"] == 0


@pytest.mark.timeout(300)
def test_a_bug_while_a_worker_starts_keeps_its_traceback(inputs, tmp_path, monkeypatch):
    class BrokenStart(ray_engine._Worker):
        def __init__(self, *a):
            {}["no such key at start"]

    monkeypatch.setattr(ray_engine, "_Worker", BrokenStart)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024 * 1024)
    with pytest.raises(RuntimeError, match="a Ray worker failed to start: KeyError") as err:
        build(_config(inputs, tmp_path / "b", engine="ray", workers=1))
    assert not isinstance(err.value, ParsitError)
    assert "in __init__" in "\n".join(err.value.__notes__)  # the worker's own traceback, as text
