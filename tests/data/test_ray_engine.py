"""The Ray engine gives the local engine's bytes at any worker count, names a failed partition, resumes.

(Lost workers and nodes: tests/data/test_ray_faults.py.)

Every test here starts real Ray (embedded, 2 CPUs) and shuts it down afterwards; each has a timeout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray  # a test dependency: missing, the suite fails

from parsit_data import build as build_mod
from parsit_data.build import build
from parsit_data.config import BuildConfig
from parsit_data.engines import ray as ray_engine
from parsit_data.errors import ParsitError
from parsit_data.worker import WorkerSpec

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_ray_left")]


@pytest.fixture
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    """The demo mixture (images, every kind of rejection) plus text records with a duplicate id."""
    d = tmp_path_factory.mktemp("ray-in")
    lines = []
    for i in range(40):
        turns = [{"from": "human", "value": f"Question {i}: what does row {i % 7} say?"},
                 {"from": "gpt", "value": f"Row {i % 7} says {'the total is ' * (i % 5 + 1)}{i * 13}."}]
        lines.append(json.dumps({"id": f"t-{i if i != 17 else 3}", "conversations": turns}))
    lines.insert(11, "{not json")
    (d / "text.jsonl").write_text("\n".join(lines) + "\n")
    return [str(DEMO / "mixture.yaml"), str(d / "text.jsonl")]


def _config(inputs, out: Path, **kw) -> BuildConfig:
    return BuildConfig(inputs=inputs, image_root=str(DEMO / "images"), out=str(out), shard_rows=8, **kw)


def _outputs(out: Path) -> dict[str, bytes]:
    """Every byte a build promises to reproduce: shards, quarantine, manifest without its timing."""
    files = {f"shards/{p.name}": p.read_bytes() for p in sorted((out / "shards").iterdir())}
    files["quarantine.jsonl"] = (out / "quarantine.jsonl").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("timing")
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    if (out / "report.json").exists():
        files["report.json"] = (out / "report.json").read_bytes()
    return files


@pytest.mark.timeout(300)
def test_ray_builds_are_byte_identical_to_local_at_1_and_2_workers(inputs, tmp_path):
    local = _outputs(_build_manifest(_config(inputs, tmp_path / "local", engine="local")))
    assert len([k for k in local if k.startswith("shards/")]) >= 8  # many partitions, so order matters
    assert local["quarantine.jsonl"].count(b"\n") >= 10
    for workers in (1, 2):
        out = tmp_path / f"ray{workers}"
        # No Ray running: the engine starts it embedded, and shuts it down when the build ends.
        assert not ray.is_initialized()
        got = _outputs(_build_manifest(_config(inputs, out, engine="ray", workers=workers)))
        assert not ray.is_initialized()
        assert got.keys() == local.keys()
        for name in local:
            assert got[name] == local[name], f"{name} differs between local and ray x{workers}"
    assert ray_engine.LAST_RUN["steady_s"] > 0


def _build_manifest(cfg: BuildConfig) -> Path:
    build(cfg)
    return Path(cfg.out)


@pytest.mark.timeout(300)
def test_worker_failure_names_the_partition_and_a_rerun_resumes(inputs, tmp_path, monkeypatch, ray_session):
    out = tmp_path / "b"
    # Sabotage partition 3 on the worker: its shard's final name is taken by a directory.
    (out / "shards" / "shard-00003.arrow").mkdir(parents=True)

    # Count partitions pulled from the driver's stream against results, to check the backpressure.
    state = {"pulled": 0, "done": 0, "most_outstanding": 0}
    real = build_mod.iter_partitions

    def counting(*a, **kw):
        for part in real(*a, **kw):
            state["pulled"] += 1
            state["most_outstanding"] = max(state["most_outstanding"], state["pulled"] - state["done"])
            yield part

    monkeypatch.setattr(build_mod, "iter_partitions", counting)

    def on_progress(r):
        state["done"] += 1

    # Not a lost worker, and not bad data: the worker's own exception, raised as the local engine raises it,
    # with the partition and the worker's traceback attached (and not retried).
    with pytest.raises(IsADirectoryError) as err:
        build(_config(inputs, out, engine="ray", workers=2), on_progress=on_progress)
    notes = "\n".join(err.value.__notes__)
    assert "partition 3 (source 'conversations', lines 25-" in notes
    assert "partitions that finished are kept" in notes and "write_shard" in notes
    assert ray_engine.LAST_RUN["retries"] == 0
    assert not (out / "manifest.json").exists()
    # At most 2 per worker submitted and unfinished, plus the one being handed out.
    assert state["most_outstanding"] <= ray_engine.IN_FLIGHT_PER_WORKER * 2 + 1
    finished = {p.name for p in (out / "_parts").glob("part-*.json")}
    assert {"part-00000.json", "part-00001.json", "part-00002.json"} <= finished

    (out / "shards" / "shard-00003.arrow").rmdir()
    reused = []
    build(_config(inputs, out, engine="ray", workers=2), on_progress=lambda r: reused.append(r.index) if r.reused else None)
    assert {0, 1, 2} <= set(reused) and 3 not in reused

    build(_config(inputs, tmp_path / "local", engine="local"))
    assert _outputs(out) == _outputs(tmp_path / "local")


@pytest.mark.timeout(120)
def test_workers_load_the_tokenizer_once_each(inputs, tmp_path, ray_session):
    """Two engine actors given every partition of the build: each loads the tokenizer exactly once."""
    from parsit_data import worker

    @ray.remote(num_cpus=0.5)
    class Probe(ray_engine._Worker):
        loads = 0

        def __init__(self, *a):
            real = worker.SegmentTokenizer

            def counted(*x, **k):
                type(self).loads += 1
                return real(*x, **k)

            worker.SegmentTokenizer = counted
            super().__init__(*a)

        def count(self):
            return type(self).loads

    cfg = _config(inputs, tmp_path / "probe", engine="ray", workers=2)
    (tmp_path / "probe" / "_parts").mkdir(parents=True)
    from parsit_data.partition import iter_partitions
    from parsit_data.sources import expand_inputs

    actors = [Probe.remote(WorkerSpec(cfg, "h", frozenset({"<|im_end|>"}), Path(cfg.out))) for _ in range(2)]
    parts = list(iter_partitions(expand_inputs(cfg.inputs), cfg.shard_rows))
    assert len(parts) >= 8
    results = ray.get([actors[i % 2].process.remote(p) for i, p in enumerate(parts)])
    assert sum(r.shard["rows"] + r.quarantined for r in results) == sum(len(p.items) for p in parts)
    assert ray.get([a.count.remote() for a in actors]) == [1, 1]


@pytest.mark.timeout(120)
def test_a_worker_that_cannot_see_the_build_directory_stops_the_build_clearly(tmp_path, ray_session):
    """What a node without the shared filesystem sees: the engine says so instead of failing later."""
    cfg = BuildConfig(inputs=[str(DEMO / "mixture.yaml")], out=str(tmp_path / "elsewhere"), engine="ray", workers=1)
    with pytest.raises(ParsitError, match=r"a Ray worker failed to start: .*is not visible on Ray node .*shared"):
        ray_engine.run(iter([]), WorkerSpec(cfg, "h", frozenset(), tmp_path / "elsewhere"), lambda r: None)
    assert ray.is_initialized()  # Ray that the engine did not start is left running (the fixture stops it)
