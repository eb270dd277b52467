"""Builds written to ``s3://`` (moto's server on loopback) hold the bytes of a local build, on both engines;
a killed ``s3://`` build resumes; a throttling store changes nothing; a URI Parsit cannot open is refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from s3_support import FaultPlan, FaultProxy

from parsit_data.build import build
from parsit_data.config import BuildConfig
from parsit_data.errors import ParsitError
from parsit_data.format.fsio import RemotePath, location

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    """The demo mixture (images, rejections of every kind) plus text records with a duplicate id and junk."""
    d = tmp_path_factory.mktemp("s3-in")
    lines = [json.dumps({"id": f"t-{i if i != 9 else 2}", "conversations": [
        {"from": "human", "value": f"What is {i} times 7?"}, {"from": "gpt", "value": f"{i} times 7 is {i * 7}."}]})
        for i in range(30)]
    lines.insert(5, "{not json")
    (d / "text.jsonl").write_text("\n".join(lines) + "\n")
    return [str(DEMO / "mixture.yaml"), str(d / "text.jsonl")]


def _config(inputs, out, **kw) -> BuildConfig:
    return BuildConfig(inputs=inputs, image_root=str(DEMO / "images"), out=str(out), shard_rows=8, **kw)


def _comparable(files: dict[str, bytes]) -> dict[str, bytes]:
    """Every object of a build except what may differ: the manifest's timing, the HTML report's title."""
    files = dict(files)
    manifest = json.loads(files.pop("manifest.json"))
    manifest.pop("timing")
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    files.pop("report.html")
    return files


def _local_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("s3-ref") / "local"
    build(_config(inputs, out))
    return _local_files(out)


@pytest.mark.timeout(120)
def test_s3_build_matches_local_and_the_manifest_is_the_last_object(inputs, reference, s3, monkeypatch):
    server, bucket = s3
    order: list[str] = []
    original = RemotePath.write_bytes

    def recording(self, data):
        order.append(self.path)
        return original(self, data)

    monkeypatch.setattr(RemotePath, "write_bytes", recording)
    manifest = build(_config(inputs, f"s3://{bucket}/builds/b1"))
    stored = server.keys(bucket, "builds/b1")
    assert _comparable(stored) == _comparable(reference)
    assert set(stored) == set(reference)  # nothing more, nothing less (no temporary keys left behind)
    assert order[-1] == f"{bucket}/builds/b1/manifest.json"
    assert sum(p.endswith("manifest.json") for p in order) == 1
    # Each partition: shard, then quarantine part, then its part file (the marker) last.
    for s in manifest.shards:
        i = int(s.path[-11:-6])
        keys = [f"{bucket}/builds/b1/{s.path}", f"{bucket}/builds/b1/_parts/quarantine-{i:05d}.jsonl",
                f"{bucket}/builds/b1/_parts/part-{i:05d}.json"]
        assert [order.index(k) for k in keys] == sorted(order.index(k) for k in keys)
    # The location is the URI as given; no credential is anywhere in the build.
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert not [k for k, v in stored.items() if secret.encode() in v]


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.usefixtures("no_ray_left")
def test_s3_build_on_ray_matches_local(inputs, reference, s3):
    import ray

    server, bucket = s3
    # Workers inherit the driver's AWS_* environment (a cluster's nodes would have their own).
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024)
    try:
        build(_config(inputs, f"s3://{bucket}/ray", engine="ray", workers=2))
    finally:
        ray.shutdown()
    assert _comparable(server.keys(bucket, "ray")) == _comparable(reference)


@pytest.mark.timeout(240)
def test_killed_s3_build_resumes_reusing_shards_that_verify(inputs, reference, s3, tmp_path):
    server, bucket = s3
    uri = f"s3://{bucket}/killed"
    big = tmp_path / "big.jsonl"  # enough partitions that the kill lands in the middle
    big.write_text("".join(json.dumps({"id": f"k{i}", "conversations": [
        {"from": "human", "value": f"Say {i}."}, {"from": "gpt", "value": f"{i}."}]}) + "\n" for i in range(1200)))
    args = [str(big), "--shard-rows", "40", "--engine", "local", "--quiet"]
    cmd = [sys.executable, "-m", "parsit_data.cli.main", "build", *args, "--out", uri]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path)
    parts = location(uri) / "_parts"
    deadline = time.time() + 150
    try:
        while time.time() < deadline and proc.poll() is None:
            if sum(p.name.startswith("part-") for p in parts.iterdir()) >= 5:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    stored = server.keys(bucket, "killed")
    assert "manifest.json" not in stored, "the build finished before it could be killed"
    assert not (tmp_path / "s3:").exists()
    finished = sorted(k for k in stored if k.startswith("_parts/part-"))
    assert len(finished) >= 5
    # Damage one finished shard: the rerun must notice (checksum) and redo it, and reuse the others.
    victim = location(uri) / "shards/shard-00001.arrow"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    reused = []
    build(BuildConfig(inputs=[str(big)], out=uri, shard_rows=40),
          on_progress=lambda r: reused.append(r.index) if r.reused else None)
    assert 1 not in reused and len(reused) >= len(finished) - 1
    ref = tmp_path / "ref"
    build(BuildConfig(inputs=[str(big)], out=str(ref), shard_rows=40))
    assert _comparable(server.keys(bucket, "killed")) == _comparable(_local_files(ref))


@pytest.mark.timeout(180)
def test_a_throttling_store_gives_the_same_build(inputs, reference, s3, monkeypatch):
    """A quarter of the requests answered 503 SlowDown, a tenth of the connections dropped (so that some
    operations fail even after the AWS SDK's own 3 attempts): the same objects all the same."""
    server, bucket = s3
    plan = FaultPlan(slowdown=0.25, drop=0.1, seed=1)
    with FaultProxy(server.endpoint.removeprefix("http://"), plan) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        build(_config(inputs, f"s3://{bucket}/throttled"))
    assert plan.counts["slowdown"] > 10 and plan.counts["dropped"] > 4
    assert _comparable(server.keys(bucket, "throttled")) == _comparable(reference)


@pytest.mark.parametrize("out", ["nosuchscheme://bucket/b1", "s3:/bucket/b1", "s3:bucket/b1"])
def test_a_uri_parsit_cannot_open_is_refused_at_start(inputs, out, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParsitError, match="cannot open|missing '/'"):
        build(_config(inputs, out))
    assert list(tmp_path.iterdir()) == []  # never a local folder named after the URI


def test_cli_refuses_an_unknown_scheme_with_one_error_line(inputs, tmp_path):
    cmd = [sys.executable, "-m", "parsit_data.cli.main", "build", inputs[1], "--out", "nosuchscheme://b/x", "--quiet"]
    res = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "error:" in res.stderr and "nosuchscheme://" in res.stderr and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []


def _rows(files: dict[str, bytes]) -> dict[str, object]:
    """What a build holds, apart from where its inputs were: shard rows (not the schema's config hash,
    which covers the input locations), the quarantine, the per-source counts."""
    import pyarrow as pa

    out = {k: pa.ipc.open_stream(v).read_all().to_pylist() for k, v in files.items() if k.startswith("shards/")}
    out["quarantine.jsonl"] = files["quarantine.jsonl"]
    manifest = json.loads(files["manifest.json"])
    out["sources"] = [{k: v for k, v in s.items() if k != "path"} for s in manifest["sources"]]
    return out


@pytest.mark.timeout(120)
def test_inputs_and_images_read_from_s3_give_the_same_rows(reference, inputs, s3, tmp_path):
    """The mixture, its JSON/JSONL files and the images as objects: streamed, same rows, same
    quarantine (``../../etc/hosts`` and a missing image included), and no key outside the image root."""
    server, bucket = s3
    root = location(f"s3://{bucket}/in")
    for p in sorted(DEMO.rglob("*")):
        if p.is_file():
            (root / f"demo/{p.relative_to(DEMO)}").write_bytes(p.read_bytes())
    (root / "text.jsonl").write_bytes(Path(inputs[1]).read_bytes())
    (root / "demo/secret.png").write_bytes((DEMO / "images/page_00.png").read_bytes())  # beside the root
    build(BuildConfig(inputs=[f"s3://{bucket}/in/demo/mixture.yaml", f"s3://{bucket}/in/text.jsonl"],
                      image_root=f"s3://{bucket}/in/demo/images", out=f"s3://{bucket}/out", shard_rows=8))
    stored = server.keys(bucket, "out")
    # A missing image's detail names the root it was looked for in: the one difference.
    stored["quarantine.jsonl"] = stored["quarantine.jsonl"].replace(f"s3://{bucket}/in/demo/images".encode(), b"ROOT")
    ref = {**reference, "quarantine.jsonl": reference["quarantine.jsonl"].replace(str(DEMO / "images").encode(), b"ROOT")}
    assert _rows(stored) == _rows(ref)
    manifest = json.loads(stored["manifest.json"])
    assert [s["path"] for s in manifest["sources"]][-1] == f"s3://{bucket}/in/text.jsonl"
    reasons = {json.loads(line)["reason"] for line in stored["quarantine.jsonl"].splitlines()}
    assert {"image_outside_root", "image_missing"} <= reasons


def test_an_image_key_may_not_leave_the_image_root(s3):
    from parsit_data.images import resolve_image_path
    from parsit_data.records import Reject

    _, bucket = s3
    root = location(f"s3://{bucket}/in/images")
    assert resolve_image_path("a/./b.png", root) == root / "a/b.png"
    for bad in ("../secret.png", "a/../../secret.png", "/abs.png", "..\\x.png"):
        with pytest.raises(Reject) as err:
            resolve_image_path(bad, root)
        assert err.value.rejection.reason == "image_outside_root"


def _upload_demo(root: RemotePath) -> None:
    for p in sorted(DEMO.rglob("*")):
        if p.is_file():
            (root / str(p.relative_to(DEMO))).write_bytes(p.read_bytes())


@pytest.mark.timeout(120)
def test_validate_inspect_and_report_take_uris_and_say_what_they_say_for_local_paths(reference, s3, tmp_path):
    """``validate`` of inputs and ``--image-root`` in a bucket, ``inspect`` and ``report`` of an ``s3://`` build,
    print what they print for the local copies (typer's Path type once made ``s3://b/k`` the local ``s3:/b/k``)."""
    from typer.testing import CliRunner

    from parsit_data.cli.main import app

    server, bucket = s3
    _upload_demo(location(f"s3://{bucket}/demo"))
    runner = CliRunner()

    def out(args: list[str], code: int) -> str:
        res = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert res.exit_code == code, res.output
        return res.output

    local = out(["validate", str(DEMO / "mixture.yaml"), "--image-root", str(DEMO / "images")], 1)
    remote = out(["validate", f"s3://{bucket}/demo/mixture.yaml", "--image-root", f"s3://{bucket}/demo/images"], 1)
    assert "image_outside_root" in local and "rejected" in local.lower()
    pick = lambda text: [ln for ln in text.splitlines() if "│" in ln or "|" in ln]  # noqa: E731 - the tables
    assert pick(remote) == pick(local)

    build_dir = tmp_path / "b"
    for rel, data in reference.items():
        (build_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (build_dir / rel).write_bytes(data)
        (location(f"s3://{bucket}/b") / rel).write_bytes(data)
    for args in (["--index", "3"], ["--id", "t-4", "--ids"]):
        assert out(["inspect", f"s3://{bucket}/b", *args], 0) == out(["inspect", str(build_dir), *args], 0)
    reported = out(["report", f"s3://{bucket}/b"], 0)
    assert reported.splitlines()[:-2] == out(["report", str(build_dir)], 0).splitlines()[:-2]
    assert f"s3://{bucket}/b/report.html" in reported
    assert b"Parsit data quality report" in (location(f"s3://{bucket}/b") / "report.html").read_bytes()
    victim = location(f"s3://{bucket}/b") / "shards/shard-00000.arrow"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 read with the row finds it
    victim.write_bytes(bytes(data))
    res = runner.invoke(app, ["inspect", f"s3://{bucket}/b"])
    assert isinstance(res.exception, ParsitError) and "does not match the build's manifest" in str(res.exception)


@pytest.mark.timeout(60)
def test_an_image_root_that_is_not_there_stops_build_and_validate_at_start(inputs, s3, tmp_path):
    """Not every image quarantined as image_missing: a missing folder, a file, or a bucket prefix with no
    object under it (an object store has no empty folders: a misspelt prefix) is an error at start."""
    from parsit_data.config import ValidateConfig
    from parsit_data.precheck import precheck
    from parsit_data.validate import ValidationOptions

    _, bucket = s3
    (tmp_path / "a-file").write_text("x")
    (location(f"s3://{bucket}/images") / "0.png").write_bytes((DEMO / "images/page_00.png").read_bytes())
    for root, said in ((str(tmp_path / "nope"), "is not a directory"), (str(tmp_path / "a-file"), "is not a directory"),
                       (f"s3://{bucket}/imagse", "no object under that prefix")):
        with pytest.raises(ParsitError, match=said):
            build(BuildConfig(inputs=inputs, image_root=root, out=str(tmp_path / "out"), shard_rows=8))
        cfg = ValidateConfig.parse(inputs=inputs, image_root=root)
        with pytest.raises(ParsitError, match=said):
            precheck(cfg.inputs, vopts=ValidationOptions(frozenset()), iopts=cfg.image_options)
    assert not (tmp_path / "out").exists()
    cfg = ValidateConfig.parse(inputs=inputs, image_root=f"s3://{bucket}/images")  # a prefix with objects: fine
    assert precheck(cfg.inputs, vopts=ValidationOptions(frozenset()), iopts=cfg.image_options).read > 0


@pytest.mark.timeout(180)
def test_cli_builds_from_an_s3_input_with_progress_counted_by_the_readers(inputs, s3, tmp_path):
    """``parsit-data build s3://bucket/in.jsonl`` as the README shows it, progress on: the ETA's count
    goes through the readers (it used to ``open()`` the URI and die with a traceback), and it equals
    what the build read."""
    from parsit_data.progress import estimate_total
    from parsit_data.sources import expand_inputs

    server, bucket = s3
    text = Path(inputs[1]).read_bytes()
    location(f"s3://{bucket}/in/text.jsonl").write_bytes(text)
    mix = f"datasets:\n  - {{json_path: text.jsonl, sampling_strategy: 'first:50%'}}\n"
    location(f"s3://{bucket}/in/mix.yaml").write_bytes(mix.encode())
    uris = [f"s3://{bucket}/in/text.jsonl", f"s3://{bucket}/in/mix.yaml"]
    lines = [x for x in text.splitlines() if x.strip()]
    assert estimate_total(expand_inputs(uris)) == len(lines) + len(lines) // 2
    cmd = [sys.executable, "-m", "parsit_data.cli.main", "build", *uris, "--out", f"s3://{bucket}/out"]
    res = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path, capture_output=True,
                         text=True, timeout=150)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    manifest = json.loads(server.keys(bucket, "out")["manifest.json"])
    assert manifest["totals"]["read"] == len(lines) + len(lines) // 2
    assert f"{len(lines) + len(lines) // 2:,}/{len(lines) + len(lines) // 2:,} records" in res.stdout


@pytest.mark.timeout(180)
def test_parquet_arrow_and_tar_inputs_read_from_s3_give_the_rows_of_local_ones(s3, tmp_path):
    """A Parquet file, a save_to_disk folder and a folder of tar shards as objects: the same rows and the
    same per-source counts as the same inputs on disk."""
    from containers_support import write_all

    server, bucket = s3
    forms = write_all(tmp_path / "in")
    names = ("onevision_parquet", "save_to_disk", "webdataset")
    local = [forms[n][0] for n in names]
    build(BuildConfig(inputs=local, image_root=str(tmp_path / "in" / "images"), out=str(tmp_path / "local"),
                      shard_rows=5))
    root = location(f"s3://{bucket}/in")
    for p in sorted((tmp_path / "in").rglob("*")):
        if p.is_file() and not p.name.endswith(".jsonl"):
            (root / p.relative_to(tmp_path / "in").as_posix()).write_bytes(p.read_bytes())
    uris = [f"s3://{bucket}/in/{Path(p).relative_to(tmp_path / 'in').as_posix()}" for p in local]
    build(BuildConfig(inputs=uris, image_root=f"s3://{bucket}/in/images", out=f"s3://{bucket}/out", shard_rows=5))
    stored = _rows(server.keys(bucket, "out"))
    ref = _rows(_local_files(tmp_path / "local"))
    assert stored == ref
    assert [s["format"] for s in json.loads(server.keys(bucket, "out")["manifest.json"])["sources"]] == \
        ["parquet", "arrow", "webdataset"]


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("no_ray_left")
def test_s3_parquet_arrow_and_tar_partitions_are_read_by_the_ray_workers(s3, tmp_path):
    """Remote Parquet, a remote save_to_disk folder and remote tar shards go to the workers as partitions of
    keys (ids and where each record is; no image bytes through the driver): each Ray worker (2) reads its own
    row groups, record batches and tar samples from the store, and the rows equal a local build's."""
    import ray

    from containers_support import write_all

    from parsit_data.partition import iter_partitions
    from parsit_data.sources import expand_inputs

    server, bucket = s3
    forms = write_all(tmp_path / "in")
    names = ("onevision_parquet", "save_to_disk", "webdataset")
    local = [forms[n][0] for n in names]
    build(BuildConfig(inputs=local, image_root=str(tmp_path / "in" / "images"), out=str(tmp_path / "local"),
                      shard_rows=3, engine="local"))
    root = location(f"s3://{bucket}/in")
    for p in sorted((tmp_path / "in").rglob("*")):
        if p.is_file() and not p.name.endswith(".jsonl"):
            (root / p.relative_to(tmp_path / "in").as_posix()).write_bytes(p.read_bytes())
    uris = [f"s3://{bucket}/in/{Path(p).relative_to(tmp_path / 'in').as_posix()}" for p in local]
    parts = list(iter_partitions(expand_inputs(uris), 3))
    assert {p.source for p in parts} == {"onevision", "hf_saved", "wds"} and len(parts) == 15
    assert all(p.spec is not None and set(k.value) <= {"id"} and k.at is not None for p in parts for k in p.items)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024)
    try:
        build(BuildConfig(inputs=uris, image_root=f"s3://{bucket}/in/images", out=f"s3://{bucket}/out",
                          shard_rows=3, engine="ray", workers=2))
    finally:
        ray.shutdown()
    assert _rows(server.keys(bucket, "out")) == _rows(_local_files(tmp_path / "local"))
