"""Training from a build on ``s3://`` (moto's server on loopback) through the local shard cache: the same
batches, sample ids and losses as from the local copy, also with a cache too small for the build, a store
that throttles and drops connections, and a run stopped and resumed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from s3_support import FaultPlan, FaultProxy  # noqa: E402
from train_helpers import make_build as make_tiny_build  # noqa: E402
from train_helpers import free_port, read_metrics  # noqa: E402
from train_helpers import tiny_config, write_config  # noqa: E402

from parsit_data.errors import ParsitError  # noqa: E402
from parsit_data.format.fsio import location  # noqa: E402
from train_support import open_loader  # noqa: E402
from parsit_train.data.cache import parse_size  # noqa: E402
from parsit_train.launch import LaunchSpec, launch  # noqa: E402


def upload(build_dir: Path, uri: str) -> str:
    """Copy a finished local build to the store, manifest last (as a build writes it)."""
    root = location(uri)
    files = sorted(p for p in build_dir.rglob("*") if p.is_file() and p.name != "manifest.json")
    for p in [*files, build_dir / "manifest.json"]:
        (root / str(p.relative_to(build_dir))).write_bytes(p.read_bytes())
    return uri


def _batches(loader, epochs: int, extra: str = "pixel_values") -> list[tuple]:
    """(sample ids, input_ids bytes, ``extra``'s bytes) of every batch: pixel values, or position_ids of packs."""
    out = []
    for _ in range(epochs):
        for batch in loader:
            out.append((tuple(batch.sample_ids), batch.input_ids.numpy().tobytes(),
                        getattr(batch, extra).numpy().tobytes() if getattr(batch, extra) is not None else b""))
    return out


def _loader(dirs, **kw):
    kw = {"batch_size": 3, "max_length": 256, **kw}
    return open_loader(dirs, tokenizer_path="qwen3", image_token_id=151655, seed=5, **kw)


def _shard_bytes(build_dir: Path) -> list[int]:
    return [s["bytes"] for s in json.loads((build_dir / "manifest.json").read_text())["shards"]]


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> Path:
    """40 rows in 10 shards."""
    from train_support import make_build

    return make_build(tmp_path_factory.mktemp("many"), "m", n_image=20, n_text=20, shard_rows=4)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_from_s3_gives_the_local_batches_with_a_small_cache(many_shards, s3, tmp_path, workers):
    server, bucket = s3
    uri = upload(many_shards, f"s3://{bucket}/m")
    local, _ = _loader([many_shards], num_workers=0)
    expected = _batches(local, 2)
    limit = 3 * max(_shard_bytes(many_shards))  # a batch of 3 may read 3 shards of the 10: the least that works
    remote, sampler = _loader([uri], num_workers=workers, cache_dir=tmp_path / "cache", cache_limit=limit,
                              group_by_length=False, persistent_workers=False)
    try:
        assert _batches(remote, 2) == expected
        stats = remote.fetcher.report()
    finally:
        remote.fetcher.stop()
    assert stats["evictions"] > 0 and stats["verify_failures"] == 0
    cached = sum(p.stat().st_size for p in (tmp_path / "cache" / "rank-0").glob("*.arrow"))
    assert cached <= limit


@pytest.mark.timeout(180)
def test_a_throttling_store_gives_the_same_batches(builds, s3, tmp_path, monkeypatch):
    server, bucket = s3
    uri = upload(builds["b"], f"s3://{bucket}/b")
    local, _ = _loader([builds["b"]], num_workers=0, group_by_length=True)
    expected = _batches(local, 2)
    plan = FaultPlan(slowdown=0.45, drop=0.1, seed=3)
    with FaultProxy(server.endpoint.removeprefix("http://"), plan) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        remote, _ = _loader([uri], num_workers=0, group_by_length=True, cache_dir=tmp_path / "c",
                            cache_limit=3 * max(_shard_bytes(builds["b"])))
        try:
            assert _batches(remote, 2) == expected
        finally:
            remote.fetcher.stop()
    assert plan.counts["slowdown"] > 3 and plan.counts["dropped"] > 0


def test_transient_store_errors_are_retried_and_counted_permanent_ones_raised(monkeypatch):
    """What the AWS SDK gives up on (after its own 3 attempts) Parsit retries with backoff, counting it."""
    from parsit_data.format import fsio

    monkeypatch.setattr(fsio, "RETRY_BASE_S", 0.001)
    before = dict(fsio.RETRIES)
    errors = [OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate."),
              OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 56, Failure when "
                      "receiving data from the peer")]
    calls = []

    def flaky():
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "ok"

    assert fsio.retrying("read s3://b/k", flaky) == "ok" and len(calls) == 3
    assert fsio.RETRIES["slowdown"] == before.get("slowdown", 0) + 1
    assert fsio.RETRIES["connection"] == before.get("connection", 0) + 1
    for permanent in (FileNotFoundError("s3://b/k"), OSError("AWS Error ACCESS_DENIED during GetObject operation")):
        calls.clear()

        def denied(exc=permanent):
            calls.append(1)
            raise exc

        with pytest.raises(OSError):
            fsio.retrying("read s3://b/k", denied)
        assert len(calls) == 1
    with pytest.raises(OSError, match="SLOW_DOWN"):  # and not forever
        fsio.retrying("read", lambda: (_ for _ in ()).throw(OSError("SLOW_DOWN")), attempts=3)


def test_a_corrupt_object_is_refused_never_a_corrupt_sample(builds, s3, tmp_path):
    server, bucket = s3
    uri = upload(builds["b"], f"s3://{bucket}/bad")
    victim = location(uri) / "shards/shard-00001.arrow"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ParsitError, match="does not match the build's manifest"):
        _loader([uri], num_workers=0, cache_dir=tmp_path / "c", cache_limit="10MiB")


def test_cache_settings_are_checked(builds, s3, tmp_path):
    server, bucket = s3
    uri = upload(builds["b"], f"s3://{bucket}/b")
    with pytest.raises(ParsitError, match="too small"):
        _loader([uri], num_workers=0, cache_dir=tmp_path / "c", cache_limit=100)
    with pytest.raises(ParsitError, match="too small: step"):  # two shards, but a batch of 3 reads three
        _loader([uri], num_workers=0, cache_dir=tmp_path / "c", cache_limit=2 * max(_shard_bytes(builds["b"])))
    with pytest.raises(ParsitError, match="cannot open"):
        _loader(["nosuchscheme://x/y"], num_workers=0, cache_dir=tmp_path / "c", cache_limit="1GiB")
    assert parse_size("10GiB") == 10 * 2**30 and parse_size("500 MB") == 500_000_000


def test_without_cache_settings_a_default_cache_is_used_and_logged(many_shards, s3, tmp_path, monkeypatch, caplog):
    """No data.cache_dir / data.cache_limit: the caller's folder (the trainer's output_dir/shard-cache) or the
    user cache dir, a limit from the free disk; the log line says where and how much. Explicit ones are kept."""
    import logging
    from collections import namedtuple

    from parsit_train.data import cache as cache_mod

    server, bucket = s3
    uri = upload(many_shards, f"s3://{bucket}/b")
    sizes = _shard_bytes(many_shards)
    local, _ = _loader([many_shards], num_workers=0)
    expected = _batches(local, 1)
    caplog.set_level(logging.INFO, logger="parsit_train.data.dataset")

    # 1. The caller's default folder; a roomy disk: the whole build fits, the limit is its size.
    remote, _ = _loader([uri], num_workers=0, default_cache_dir=tmp_path / "run" / "shard-cache")
    try:
        assert _batches(remote, 1) == expected
        assert remote.dataset.cache.dir == (tmp_path / "run" / "shard-cache" / "rank-0").resolve()
        assert remote.dataset.cache.limit == sum(sizes)
    finally:
        remote.fetcher.stop()
    line = next(r.getMessage() for r in caplog.records if "shard cache" in r.getMessage())
    assert str(tmp_path / "run" / "shard-cache") in line and "under output_dir" in line
    assert "data.cache_limit unset, the whole build" in line

    # 2. No caller folder: the user cache dir; a disk with little free: half of it per local rank (2 here).
    usage = namedtuple("usage", "total used free")
    free = 4 * max(sizes) * 2 * 2  # half, shared by 2 ranks: room for 4 of the 10 shards
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: usage(10 * free, 9 * free, free))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    caplog.clear()
    remote, _ = _loader([uri], num_workers=0)
    try:
        assert _batches(remote, 1) == expected
        assert remote.dataset.cache.dir == (tmp_path / "xdg" / "parsit" / "shards" / "rank-0").resolve()
        assert remote.dataset.cache.limit == free // 4 < sum(sizes)
    finally:
        remote.fetcher.stop()
    line = next(r.getMessage() for r in caplog.records if "shard cache" in r.getMessage())
    assert "the user cache dir" in line and "2 local rank(s)" in line

    # 3. Too little free disk for two shards: a clear error naming the settings. Explicit settings win.
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: usage(100, 99, 1))
    with pytest.raises(ParsitError, match="set data.cache_dir to a larger disk or data.cache_limit"):
        _loader([uri], num_workers=0)
    remote, _ = _loader([uri], num_workers=0, cache_dir=tmp_path / "mine", cache_limit="10MiB")
    remote.fetcher.stop()
    assert remote.dataset.cache.limit == 10 * 2**20 and remote.dataset.cache.dir.parent == (tmp_path / "mine").resolve()


def test_the_trainer_defaults_the_cache_under_its_output_dir(builds, s3, tmp_path):
    """What a rank and the launcher's data check open for an s3:// build without cache settings."""
    from parsit_train.config import load_config
    from parsit_train.preflight import check_data

    server, bucket = s3
    uri = upload(builds["b"], f"s3://{bucket}/b")
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_config(uri, tmp_path / "run")))
    assert cfg.data.cache_dir is None and cfg.data.cache_limit is None
    check_data(cfg)
    rank0 = tmp_path / "run" / "shard-cache" / "rank-0"
    shas = {e["sha256"] for e in json.loads((builds["b"] / "manifest.json").read_text())["shards"]}
    assert {p.stem for p in (rank0 / "index").glob("*.arrow")} == shas  # the build was read once, into it
    assert {p.stem for p in rank0.glob("*.arrow")} <= shas and any(rank0.glob("*.arrow"))


# --- end to end: parsit-train on 1 and 2 gloo ranks ----------------------------------------------------

STEPS = 8


def _train(build: str | Path, out: Path, nproc: int, stop_after: int | None = None, **data) -> list[dict]:
    cfg = tiny_config(build, out, optim={"lr": {"projector": 5e-3, "vision_tower": 5e-3, "language_model": 5e-3},
                                         "micro_batch_size": 2, "max_steps": STEPS, "schedule": "constant"},
                      checkpoint={"every_steps": STEPS // 2, "export_hf": False})
    cfg["data"] = {"builds": [str(build)], **data}
    path = write_config(out.parent / f"{out.name}.yaml", cfg)
    spec = LaunchSpec(config=path, nproc=nproc, master_port=free_port(), timeout_s=240, stop_after=stop_after)
    assert launch(spec) == 0
    return read_metrics(out)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_from_s3_matches_local_also_after_a_resume(s3, tmp_path):
    server, bucket = s3
    local = make_tiny_build(tmp_path / "data", n=12, n_text=4)  # 16 rows, shards of 8
    uri = upload(local, f"s3://{bucket}/tiny")
    reference = _train(local, tmp_path / "local", nproc=2)
    cache = {"cache_dir": str(tmp_path / "cache"), "cache_limit": 2 * max(_shard_bytes(local))}
    # From s3: stopped half way (a checkpoint), then resumed from it with a cold cache of two shards.
    first = _train(uri, tmp_path / "s3", nproc=2, stop_after=STEPS // 2, **cache)
    assert len(first) == STEPS // 2
    shutil.rmtree(tmp_path / "cache")
    resumed = _train(uri, tmp_path / "s3", nproc=2, **cache)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(resumed, reference, strict=True):
        assert a["sample_ids"] == b["sample_ids"], a["step"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-6), a["step"]


@pytest.mark.timeout(180)
def test_a_shard_window_order_reads_each_shard_once_per_epoch_through_a_small_cache(many_shards, s3, tmp_path):
    server, bucket = s3
    uri = upload(many_shards, f"s3://{bucket}/w")
    sizes = _shard_bytes(many_shards)
    local, local_sampler = _loader([many_shards], num_workers=0, shuffle_window_shards=2)
    expected = _batches(local, 3)
    # The order: a permutation of the epoch's rows, each window of 2 shards contiguous, differing per epoch.
    order0, order1 = local_sampler.epoch_order(0), local_sampler.epoch_order(1)
    assert sorted(order0) == list(range(40)) and list(order0) != list(order1)
    shards = order0 // 4
    windows = [set(shards[i:i + 8]) for i in range(0, 40, 8)]
    assert all(len(w) == 2 for w in windows) and set().union(*windows) == set(range(10))
    remote, sampler = _loader([uri], num_workers=0, shuffle_window_shards=2, cache_dir=tmp_path / "c",
                              cache_limit=4 * max(sizes))
    try:
        assert _batches(remote, 3) == expected
        report = remote.fetcher.report()
    finally:
        remote.fetcher.stop()
    # Each shard at most once per epoch (the opening pass made the index: counted apart).
    assert all(v <= sum(sizes) for v in report["epoch_bytes"].values()), (report, sum(sizes))
    with pytest.raises(ParsitError, match="shuffle_window_shards"):
        _loader([many_shards], num_workers=0, shuffle_window_shards=3)[1].load_state_dict(sampler.state_dict())


@pytest.mark.timeout(180)
def test_packed_batches_from_s3_match_local_through_a_small_cache(many_shards, s3, tmp_path):
    """Packing: the fetcher plans from the packs this rank will read, not from the sample order."""
    server, bucket = s3
    uri = upload(many_shards, f"s3://{bucket}/p")
    sizes = _shard_bytes(many_shards)
    kw = dict(pack_length=256, batch_size=1, max_images_per_pack=2, pack_window=8, shuffle_window_shards=2, rank=1,
              world_size=2)
    local, _ = _loader([many_shards], num_workers=0, **kw)
    expected = _batches(local, 2, "position_ids")
    remote, _ = _loader([uri], num_workers=0, cache_dir=tmp_path / "c", cache_limit=4 * max(sizes), **kw)
    try:
        assert _batches(remote, 2, "position_ids") == expected
        report = remote.fetcher.report()
    finally:
        remote.fetcher.stop()
    assert report["verify_failures"] == 0 and report["evictions"] > 0
    assert all(v <= sum(sizes) for v in report["epoch_bytes"].values()), (report, sum(sizes))


@pytest.mark.timeout(180)
def test_a_position_saved_at_two_ranks_resumes_from_s3_at_one(many_shards, s3, tmp_path):
    """Another world size after a stop: the s3 loader at 1 rank continues with the local loader's batches."""
    server, bucket = s3
    uri = upload(many_shards, f"s3://{bucket}/r")
    limit = 4 * max(_shard_bytes(many_shards))
    seen: set[str] = set()  # what both ranks of the first run read in 3 steps of 2 x 3 samples
    for rank in (0, 1):
        first, sampler = _loader([many_shards], num_workers=0, rank=rank, world_size=2, shuffle_window_shards=2)
        it = iter(first)
        for _ in range(3):
            seen.update(next(it).sample_ids)
    assert len(seen) == 18
    state = sampler.state_dict()
    local, local_sampler = _loader([many_shards], num_workers=0, shuffle_window_shards=2)
    local_sampler.load_state_dict(state)
    left = len(local_sampler)  # batches of 3 left in epoch 0 at one rank
    expected = _batches(local, 2)
    remote, remote_sampler = _loader([uri], num_workers=0, shuffle_window_shards=2, cache_dir=tmp_path / "c",
                                     cache_limit=limit)
    try:
        remote_sampler.load_state_dict(state)
        assert _batches(remote, 2) == expected
    finally:
        remote.fetcher.stop()
    rest = [i for ids, _, _ in expected[:left] for i in ids]
    assert len(set(rest)) == len(rest) == 3 * left and not set(rest) & seen  # the rest of epoch 0, none again
