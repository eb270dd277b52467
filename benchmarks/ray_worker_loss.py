"""What one killed Ray worker costs: the same Ray build with and without a SIGKILL of one worker mid-build.

    python benchmarks/ray_worker_loss.py                      # 10k records, 2 workers, 2 repeats (~2 min)
    python benchmarks/ray_worker_loss.py --records 100000 --repeats 3

Ray starts once (embedded, every core); the two configurations take turns, repeat after repeat. In the
"one worker killed" builds, the first worker process gets SIGKILL (what the OOM killer or a spot
preemption does) as soon as the first partition is committed: its partitions in flight are lost, the
engine starts a fresh worker (which loads the tokenizer again) and gives them out again after a short
backoff. The table shows medians over the repeats, the extra wall time against the no-kill baseline
from the same run, and the retries; the outputs of every build, and of a local-engine build, are
checked to be byte-identical before the table is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ray_scaling import _digest, generate  # noqa: E402  (sets the offline environment, the repo path)

from parsit_data.build import build  # noqa: E402
from parsit_data.config import BuildConfig  # noqa: E402


def _build(data: Path, out: Path, engine: str, workers: int | None, shard_rows: int, kill: bool) -> float:
    from parsit_data.engines import ray as ray_engine

    shutil.rmtree(out, ignore_errors=True)
    cfg = BuildConfig(inputs=[str(data)], out=str(out), engine=engine, workers=workers, shard_rows=shard_rows)
    done = []

    def on_progress(result):
        done.append(result.index)
        if kill and len(done) == 1:
            os.kill(ray_engine.WORKER_PIDS[0], signal.SIGKILL)

    t0 = time.perf_counter()
    build(cfg, on_progress=on_progress)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-rows", type=int, default=1024)
    ap.add_argument("--workdir", type=Path, default=None, help="where data and builds go (default: a temp dir)")
    args = ap.parse_args(argv)

    import ray

    from parsit_data.engines import ray as ray_engine

    work = args.workdir or Path(tempfile.mkdtemp(prefix="parsit-loss-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "records.jsonl"
    generate(data, args.records)
    print(f"{args.records:,} records ({data.stat().st_size / 1e6:.1f} MB), {args.workers} workers, shards of "
          f"{args.shard_rows}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)
    _build(data, work / "local", "local", None, args.shard_rows, False)
    want = _digest(work / "local")

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             object_store_memory=ray_engine.EMBEDDED_OBJECT_STORE_BYTES)
    configs = [("no kill (baseline)", False), ("one worker killed", True)]
    rows = {name: {"total": [], "steady": [], "retries": [], "replaced": []} for name, _ in configs}
    try:
        for r in range(args.repeats):
            for name, kill in configs:
                out = work / f"ray-{int(kill)}"
                total = _build(data, out, "ray", args.workers, args.shard_rows, kill)
                assert _digest(out) == want, f"{name}: output differs from the local engine's"
                row = rows[name]
                row["total"].append(total)
                row["steady"].append(ray_engine.LAST_RUN["steady_s"])
                row["retries"].append(ray_engine.LAST_RUN["retries"])
                row["replaced"].append(ray_engine.LAST_RUN["workers_replaced"])
                print(f"  repeat {r}: {name}: {total:.2f}s, {ray_engine.LAST_RUN['retries']} partition retries",
                      flush=True)
    finally:
        ray.shutdown()

    base = statistics.median(rows[configs[0][0]]["total"])
    print("\nAll builds byte-identical to the local engine's.\n")
    print("| build | whole build (s) | steady (s) | extra vs baseline | partitions retried | workers replaced |")
    print("|---|---|---|---|---|---|")
    for name, _ in configs:
        row = rows[name]
        total = statistics.median(row["total"])
        print(f"| {name} | {total:.2f} | {statistics.median(row['steady']):.2f} | "
              f"{total - base:+.2f}s ({(total / base - 1) * 100:+.0f}%) | {statistics.median(row['retries']):g} | "
              f"{statistics.median(row['replaced']):g} |")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
