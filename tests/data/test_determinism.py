"""Same inputs and config give the same bytes; a killed build resumes to the same bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parsit_data.build import build
from parsit_data.config import BuildConfig
from parsit_data.format import read_shard

REPO = Path(__file__).resolve().parents[2]


def _records(n: int) -> str:
    lines = []
    for i in range(n):
        if i % 97 == 13:
            lines.append('{"id": broken')
            continue
        lines.append(json.dumps({"id": f"r{i}", "conversations": [
            {"from": "human", "value": f"Question {i}: what is {i} times {i % 13}?"},
            {"from": "gpt", "value": f"{i} times {i % 13} is {i * (i % 13)}."}]}))
    return "\n".join(lines) + "\n"


def _snapshot(out: Path) -> dict[str, bytes]:
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "shards").iterdir()}
    files["quarantine.jsonl"] = (out / "quarantine.jsonl").read_bytes()
    m = json.loads((out / "manifest.json").read_text())
    m.pop("timing")
    files["manifest"] = json.dumps(m, sort_keys=True).encode()
    return files


@pytest.fixture()
def src(tmp_path) -> Path:
    p = tmp_path / "in.jsonl"
    p.write_text(_records(1500))
    return p


def test_two_builds_are_byte_identical(tmp_path, src):
    for name in ("a", "b"):
        build(BuildConfig(inputs=[str(src)], out=str(tmp_path / name), shard_rows=400))
    a, b = _snapshot(tmp_path / "a"), _snapshot(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 4 + 2
    for k in a:
        assert a[k] == b[k], k


def test_rebuild_in_place_reuses_and_refuses_other_config(tmp_path, src):
    out = tmp_path / "o"
    build(BuildConfig(inputs=[str(src)], out=str(out), shard_rows=400))
    first = _snapshot(out)
    build(BuildConfig(inputs=[str(src)], out=str(out), shard_rows=400))
    assert _snapshot(out) == first
    from parsit_data.errors import ParsitError

    with pytest.raises(ParsitError, match="--overwrite"):
        build(BuildConfig(inputs=[str(src)], out=str(out), shard_rows=300))
    build(BuildConfig(inputs=[str(src)], out=str(out), shard_rows=300, overwrite=True))
    assert len(list((out / "shards").iterdir())) == 5  # no stale shard of the old layout left behind


@pytest.mark.timeout(240)
def test_killed_build_resumes_to_the_same_bytes(tmp_path, src):
    ref = tmp_path / "ref"
    build(BuildConfig(inputs=[str(src)], out=str(ref), shard_rows=50))
    expected = _snapshot(ref)

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "parsit_data.cli.main", "build", str(src), "--out", str(out),
           "--shard-rows", "50", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            parts = list((out / "_parts").glob("part-*.json")) if (out / "_parts").is_dir() else []
            if len(parts) >= 4 or proc.poll() is not None:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    # Nothing under a final name is partial: every shard that exists reads back whole.
    for shard in (out / "shards").glob("shard-*.arrow"):
        read_shard(shard)
    # Corrupt one finished shard: the rerun must notice (checksum) and redo it.
    finished = sorted((out / "shards").glob("shard-*.arrow"))
    if finished:
        data = bytearray(finished[0].read_bytes())
        data[len(data) // 2] ^= 0xFF
        finished[0].write_bytes(bytes(data))
    subprocess.run(cmd, env=env, cwd=REPO, check=True, timeout=180)
    assert _snapshot(out) == expected
    assert not [p for p in (out / "shards").iterdir() if not p.name.startswith("shard-")]


def _mixed_records(n: int) -> str:
    """Valid, broken and (with --max-length 60) overlong records, interleaved."""
    lines = []
    for i in range(n):
        if i % 11 == 3:
            lines.append('{"id": broken')
        elif i % 7 == 5:
            lines.append(json.dumps({"id": f"m{i}", "conversations": [{"from": "gpt", "value": "no question"}]}))
        else:
            answer = " ".join(["long"] * 80) if i % 5 == 1 else f"{i} is {i % 13} mod 13."
            lines.append(json.dumps({"id": f"m{i}", "conversations": [
                {"from": "human", "value": f"What is {i} mod 13?"}, {"from": "gpt", "value": answer}]}))
    return "\n".join(lines) + "\n"


def test_chunking_inside_a_partition_does_not_change_the_output(tmp_path, monkeypatch):
    """Validation of one chunk overlaps tokenization of the previous one; the bytes must not care,
    and the quarantine stays in input order however validation and overlong rejects interleave."""
    from parsit_data import pipeline

    src = tmp_path / "in.jsonl"
    src.write_text(_mixed_records(300))
    snaps = {}
    for chunk in (1, 7, 10_000):
        monkeypatch.setattr(pipeline, "CHUNK_ROWS", chunk)
        out = tmp_path / f"c{chunk}"
        build(BuildConfig(inputs=[str(src)], out=str(out), shard_rows=128, max_length=60))
        snaps[chunk] = _snapshot(out)
    assert snaps[1] == snaps[7] == snaps[10_000]
    lines = [json.loads(x) for x in snaps[1]["quarantine.jsonl"].decode().splitlines()]
    reasons = {q["reason"] for q in lines}
    assert {"invalid_json", "not_alternating", "overlong"} <= reasons, reasons
    assert [q["line"] for q in lines] == sorted(q["line"] for q in lines)


def test_the_pipeline_leaves_no_reference_cycles(tmp_path, monkeypatch):
    """The pipeline pauses the garbage collector during each step because it makes no cycles: with
    the collector off for the whole build, a collection after each partition's commit finds nothing
    (past the one-time imports of a first build)."""
    import gc

    from parsit_data import pipeline
    from parsit_data.engines import local

    src = tmp_path / "in.jsonl"
    src.write_text(_mixed_records(200))
    demo = REPO / "examples" / "demo"
    found = []
    real_commit, real_run = pipeline.commit_partition, local.process_partitions

    def counted(*args):
        result = real_commit(*args)
        found.append(gc.collect())
        return result

    def run(*args):
        gc.collect()  # what came before the pipeline (the previous build's report: matplotlib) is not counted
        yield from real_run(*args)

    def both(tag):
        build(BuildConfig(inputs=[str(src)], out=str(tmp_path / f"{tag}-text"), shard_rows=64, max_length=60))
        build(BuildConfig(inputs=[str(demo / "mixture.yaml")], image_root=str(demo / "images"),
                          out=str(tmp_path / f"{tag}-demo"), shard_rows=16))

    both("warm")
    monkeypatch.setattr(pipeline, "commit_partition", counted)
    monkeypatch.setattr(local, "process_partitions", run)
    gc.collect()
    gc.disable()
    try:
        both("counted")
    finally:
        gc.enable()
    assert len(found) > 5 and not any(found), found


def test_the_collector_is_off_while_the_pipeline_runs_and_cycles_are_still_freed_in_the_run(tmp_path, monkeypatch):
    """The collector is off for the run (restored after it); a cycle that a record would leave is freed
    during the run, once the young generation passes its bound, not only after the build."""
    import gc
    import weakref

    from parsit_data import pipeline

    src = tmp_path / "in.jsonl"
    src.write_text(_mixed_records(400))
    real_check, real_commit = pipeline.check_item, pipeline.commit_partition
    freed, states, at_commit = [], [], []

    class Node:
        pass

    def cyclic_check(item, *a, **k):
        n = Node()
        n.me = [n, list(range(50))]  # a reference cycle per record: only the collector frees it
        weakref.finalize(n, freed.append, 1)
        states.append(gc.isenabled())
        return real_check(item, *a, **k)

    def commit(*a):
        at_commit.append(len(freed))
        return real_commit(*a)

    monkeypatch.setattr(pipeline, "check_item", cyclic_check)
    monkeypatch.setattr(pipeline, "commit_partition", commit)
    monkeypatch.setattr(pipeline, "YOUNG_LIMIT", 2_000)
    assert gc.isenabled()
    build(BuildConfig(inputs=[str(src)], out=str(tmp_path / "out"), shard_rows=64, max_length=60))
    assert gc.isenabled() and states and not any(states)
    assert len(at_commit) > 3 and at_commit[-1] > 0  # freed during the run, before the last commit


def test_an_empty_partition_commits_an_empty_shard(tmp_path):
    """process_partition on no records still writes its shard, quarantine part and part file."""
    from parsit_data.format import part_path
    from parsit_data.partition import Partition
    from parsit_data.pipeline import process_partition
    from parsit_data.worker import WorkerContext, WorkerSpec
    from parsit_data.validate import control_tokens_of
    from parsit_data.templates import get_template

    cfg = BuildConfig(inputs=["unused.jsonl"], out=str(tmp_path))
    (tmp_path / "shards").mkdir()
    (tmp_path / "_parts").mkdir()
    ctx = WorkerContext(WorkerSpec(cfg, "h", control_tokens_of(get_template(cfg.template, cfg.tokenizer)), tmp_path))
    result = process_partition(Partition(0, "s", []), ctx)
    assert result.index == 0 and result.shard["rows"] == 0 and result.quarantined == 0
    assert read_shard(tmp_path / result.shard["path"]).num_rows == 0
    assert json.loads(part_path(tmp_path, 0).read_text())["shard"]["sha256"] == result.shard["sha256"]
