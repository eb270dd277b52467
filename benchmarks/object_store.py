"""Training reads from ``s3://`` (moto's server on loopback) through the shard cache, versus local disk.

In one run, on one build (text and image rows, ``--shards`` shards), with the same loader settings and a
shard-window shuffle (``data.shuffle_window_shards``):

- ``local``: the build on local disk (the baseline; its epochs alternate with the warm run's);
- ``s3 cold``: a fresh run from ``s3://`` with a cache of ``--cache-fraction`` of the build (10%): opening
  (the per-shard index: the build read once) and then each epoch, fetching ahead while it reads;
- ``s3 10% cache, epoch N``: the following epochs of that run (steady state: every shard fetched again,
  at most once per epoch, since the cache holds a tenth of the build); bytes are counted in the epoch
  that reads them (the next epoch's first window is fetched during the previous one);
- ``s3 warm``: a new run over a cache that already holds the whole build (a restart on the same node):
  nothing fetched.

Reported per row: seconds per epoch, samples/s, throughput relative to local, bytes fetched in the epoch
relative to the build's size, and the store's retries; the last line gives the median over epochs of
the warm/local ratio of each pair of alternating epochs. Targets: each shard fetched at most once per epoch
with a cache of 10% (bytes/epoch <= 1.0x the build), warm-cache throughput >= 0.9x local.

moto is a Python server on the same 2 cores, so cold numbers say more about moto than about S3; what
the table shows is the cache's behaviour (bytes, stalls) and that a warm cache costs nothing.

Run (about a minute on 2 cores)::

    python benchmarks/object_store.py --rows 6000 --shards 40 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from PIL import Image  # noqa: E402

from parsit_data.format import fsio  # noqa: E402
from parsit_data.build import build  # noqa: E402
from parsit_data.config import BuildConfig  # noqa: E402
from parsit_train.config import DataConfig, DataLoaderConfig  # noqa: E402
from parsit_train.data import BatchSpec, build_dataloader, open_view  # noqa: E402

WORDS = "invoice total amount due date account balance payment reference customer address page".split()


def make_build(root: Path, rows: int, shards: int) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    lines = []
    for i in range(rows):
        words = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(5 + i % 40))
        rec = {"id": f"r{i:06d}", "conversations": [{"from": "human", "value": f"Question {i}: {words}?"},
                                                     {"from": "gpt", "value": f"Answer {i}: {words}."}]}
        if i % 2 == 0:
            Image.new("RGB", (48 + i % 32, 40), ((i * 37) % 256, (i * 91) % 256, 90)).save(images / f"{i}.png")
            rec["image"] = f"{i}.png"
            rec["conversations"][0]["value"] = "<image>\n" + rec["conversations"][0]["value"]
        lines.append(json.dumps(rec))
    (root / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = root / "build"
    build(BuildConfig(inputs=[str(root / "in.jsonl")], out=str(out), image_root=str(images), image_size=28,
                      patch_size=14, shard_rows=-(-rows // shards)))
    return out


def upload(build_dir: Path, uri: str) -> None:
    root = fsio.location(uri)
    files = sorted(p for p in build_dir.rglob("*") if p.is_file() and p.name != "manifest.json")
    for p in [*files, build_dir / "manifest.json"]:
        (root / str(p.relative_to(build_dir))).write_bytes(p.read_bytes())


def loader(where, args, **kw):
    view = open_view([where], "qwen3", max_length=1024, **kw)
    loader = build_dataloader(view, DataConfig(builds=[str(where)], shuffle_window_shards=args.window),
                              DataLoaderConfig(num_workers=args.workers, persistent_workers=False),
                              BatchSpec(batch_size=args.batch_size, image_token_id=151655, seed=1))
    return loader, loader.sampler


def epoch(ld) -> tuple[float, int, list]:
    t0 = time.perf_counter()
    n, ids = 0, []
    for batch in ld:
        n += len(batch.sample_ids)
        ids.extend(batch.sample_ids)
    return time.perf_counter() - t0, n, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=6000)
    ap.add_argument("--shards", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--window", type=int, default=2, help="data.shuffle_window_shards")
    ap.add_argument("--cache-fraction", type=float, default=0.10)
    args = ap.parse_args()

    from s3_support import CREDENTIALS, start_moto

    server = start_moto()
    os.environ.update(CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    bucket = server.new_bucket("bench")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        local = make_build(tmp / "src", args.rows, args.shards)
        manifest = json.loads((local / "manifest.json").read_text())
        sizes = [s["bytes"] for s in manifest["shards"]]
        total = sum(sizes)
        uri = f"s3://{bucket}/bench"
        upload(local, uri)
        limit = max(int(args.cache_fraction * total), 2 * args.window * max(sizes))
        rows = []

        # Cold: a fresh cache of a tenth of the build; the opening pass makes the index (the build read once).
        t0 = time.perf_counter()
        retries0 = sum(fsio.RETRIES.values())
        ld, _ = loader(uri, args, cache_dir=tmp / "cache-small", cache_limit=limit)
        rows.append(("s3 cold: open (index)", 0, time.perf_counter() - t0, 0, ld.dataset.cache_stats["fetched_bytes"], 0))
        cold_ids = []
        for e in range(args.epochs):
            s, n, ids = epoch(ld)
            cold_ids.append(ids)
            name = "s3 cold: epoch 0" if e == 0 else f"s3 {args.cache_fraction:.0%} cache: epoch {e}"
            rows.append((name, e, s, n, ld.fetcher.epoch_bytes.get(e, 0), sum(fsio.RETRIES.values()) - retries0))
        ld.fetcher.stop()

        # Warm: a cache that holds the whole build, filled by an earlier run; a new run reads only local files.
        big = tmp / "cache-big"
        ld, _ = loader(uri, args, cache_dir=big, cache_limit=2 * total)
        epoch(ld)
        ld.fetcher.stop()
        t0 = time.perf_counter()
        warm, _ = loader(uri, args, cache_dir=big, cache_limit=2 * total)
        rows.append(("s3 warm: open", 0, time.perf_counter() - t0, 0, warm.dataset.cache_stats["fetched_bytes"], 0))
        base, _ = loader(local, args)
        epoch(base), epoch(warm)  # first touch (page cache, mappings) out of both
        # Local and warm epochs alternate, so that the load of the shared machine hits both alike.
        local_ids = []
        for e in range(1, args.epochs + 1):
            s, n, ids = epoch(base)
            local_ids.append(ids)
            rows.append(("local", e, s, n, 0, 0))
            before = sum(warm.fetcher.epoch_bytes.values())
            s, n, _ = epoch(warm)
            rows.append(("s3 warm", e, s, n, sum(warm.fetcher.epoch_bytes.values()) - before, 0))
        warm.fetcher.stop()
        # The same samples in the same order: the cold run's epoch 1.. and the local run's.
        same = cold_ids[1:] == local_ids[:args.epochs - 1]
    local_rows = [r for r in rows if r[0] == "local"]
    local_rate = sum(r[3] for r in local_rows) / sum(r[2] for r in local_rows)
    server.server.stop()

    print(f"\nbuild: {args.rows} rows in {len(sizes)} shards, {total / 2**20:.1f} MiB; cache {limit / 2**20:.2f} MiB "
          f"({limit / total:.0%} of the build); batch {args.batch_size}, {args.workers} workers, window {args.window} shards\n")
    print(f"| {'run':<26} | {'epoch':>5} | {'s':>7} | {'samples/s':>9} | {'vs local':>8} | {'fetched / build':>15} | {'retries':>7} |")
    print(f"|{'-' * 28}|{'-' * 7}|{'-' * 9}|{'-' * 11}|{'-' * 10}|{'-' * 17}|{'-' * 9}|")
    for name, e, s, n, b, r in rows:
        rate = n / s if n else 0
        rel = f"{rate / local_rate:.2f}x" if n else "-"
        print(f"| {name:<26} | {e:>5} | {s:>7.3f} | {rate:>9.0f} | {rel:>8} | {b / total:>14.2f}x | {r:>7} |")
    warm = [r for r in rows if r[0] == "s3 warm"]
    # Each warm epoch against the local epoch just before it (same load on the shared machine), median.
    warm_ratio = statistics.median((w[3] / w[2]) / (b[3] / b[2]) for w, b in zip(warm, local_rows, strict=True))
    small = [r for r in rows if "cache: epoch" in r[0]]
    worst = max(r[4] for r in small) / total
    print(f"\nwarm-cache throughput {warm_ratio:.2f}x local (median of {len(warm)} epoch pairs; target >= 0.9x); bytes fetched per epoch "
          f"with a {limit / total:.0%} cache at most {worst:.2f}x the build (target <= 1.0x: each shard at most once)")
    print(f"same sample order from s3 as from local: {same}")


if __name__ == "__main__":
    main()
