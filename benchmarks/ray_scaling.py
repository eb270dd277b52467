"""Build time of the local engine vs Ray with 1 and 2 workers, on generated text records, in one run.

    python benchmarks/ray_scaling.py                 # ~100k records (the issue's size)
    python benchmarks/ray_scaling.py --records 20000 --repeats 3

Each configuration builds the same JSONL file into its own directory (fresh each repeat, so nothing is
reused). Ray is started once per worker count; start-up is shown apart from the build: ``ray.init``,
then "workers ready" (the actors start and load the tokenizer, once per build). "Steady" is the engine's
dispatch loop with the workers up (partitions streamed from the driver, processed, committed): what a
long build on a running cluster is made of. "Whole build" is ``build()`` end to end, start-up of the
workers and the driver's set-up and manifest included. The local engine has no start-up column: its
whole build is its steady state. Medians over the repeats; the outputs of every configuration are
checked to be byte-identical before the table is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from parsit_data.build import build  # noqa: E402
from parsit_data.config import BuildConfig  # noqa: E402

_WORDS = ("the model reads a page of the annual report and answers questions about tables figures totals "
          "revenue margin quarter invoice date address signature chart axis legend column row header footer "
          "paragraph title section summary scanned document layout text region number percent growth").split()


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def generate(path: Path, n: int, seed: int = 0) -> None:
    """``n`` JSONL conversation records, 1-3 rounds, with about 1% that the build must quarantine."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            turns = []
            for _ in range(rng.randint(1, 3)):
                turns.append({"from": "human", "value": _sentence(rng, 5, 25) + " " + _sentence(rng, 3, 12)})
                turns.append({"from": "gpt", "value": " ".join(_sentence(rng, 6, 30) for _ in range(rng.randint(1, 4)))})
            r = rng.random()
            if r < 0.005:
                turns[-1]["value"] = ""  # empty_turn
            elif r < 0.01:
                turns[0]["from"] = "robot"  # unknown_role
            f.write(json.dumps({"id": f"gen-{i}", "conversations": turns}) + "\n")


def _digest(out: Path) -> str:
    """Hash of everything that must not depend on the engine: shards, quarantine, manifest minus timing."""
    h = hashlib.sha256()
    for p in sorted((out / "shards").iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    h.update((out / "quarantine.jsonl").read_bytes())
    m = json.loads((out / "manifest.json").read_text())
    m.pop("timing", None)
    h.update(json.dumps(m, sort_keys=True).encode())
    return h.hexdigest()


def _build(data: Path, out: Path, engine: str, workers: int | None, shard_rows: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cfg = BuildConfig(inputs=[str(data)], out=str(out), engine=engine, workers=workers, shard_rows=shard_rows)
    t0 = time.perf_counter()
    build(cfg)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shard-rows", type=int, default=2048)
    ap.add_argument("--workdir", type=Path, default=None, help="where data and builds go (default: a temp dir)")
    args = ap.parse_args(argv)

    import ray

    from parsit_data.engines import ray as ray_engine

    work = args.workdir or Path(tempfile.mkdtemp(prefix="parsit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "records.jsonl"
    t0 = time.perf_counter()
    generate(data, args.records)
    print(f"generated {args.records:,} records ({data.stat().st_size / 1e6:.1f} MB) in "
          f"{time.perf_counter() - t0:.1f}s; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}",
          flush=True)

    rows: list[dict] = []
    digests: dict[str, str] = {}

    times = []
    for r in range(args.repeats):
        times.append(_build(data, work / "local", "local", None, args.shard_rows))
        print(f"  local repeat {r}: {times[-1]:.2f}s", flush=True)
    digests["local"] = _digest(work / "local")
    rows.append({"name": "local", "init": None, "ready": None, "steady": times, "total": times})

    for workers in (1, 2):
        name = f"ray x{workers}"
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 object_store_memory=ray_engine.EMBEDDED_OBJECT_STORE_BYTES)
        init = time.perf_counter() - t0
        row = {"name": name, "init": init, "ready": [], "steady": [], "total": []}
        try:
            for r in range(args.repeats):
                row["total"].append(_build(data, work / name.replace(" ", ""), "ray", workers, args.shard_rows))
                row["ready"].append(ray_engine.LAST_RUN["workers_ready_s"])
                row["steady"].append(ray_engine.LAST_RUN["steady_s"])
                print(f"  {name} repeat {r}: {row['total'][-1]:.2f}s (workers ready {row['ready'][-1]:.2f}s, "
                      f"steady {row['steady'][-1]:.2f}s)", flush=True)
        finally:
            ray.shutdown()
        digests[name] = _digest(work / name.replace(" ", ""))
        rows.append(row)

    if len(set(digests.values())) != 1:
        print(f"OUTPUTS DIFFER between engines: {digests}", file=sys.stderr)
        return 1
    med = statistics.median
    base = med(rows[1]["steady"])
    print(f"\n{args.records:,} records, shard_rows {args.shard_rows}, {os.cpu_count()} CPUs, median of "
          f"{args.repeats}; outputs byte-identical (sha256 {digests['local'][:12]})")
    print("| engine | ray.init (s) | workers ready (s) | steady build (s) | whole build (s) | records/s (steady) "
          "| steady speed-up vs ray x1 |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        init = f"{row['init']:.1f}" if row["init"] is not None else "-"
        ready = f"{med(row['ready']):.1f}" if row["ready"] else "-"
        steady = med(row["steady"])
        print(f"| {row['name']} | {init} | {ready} | {steady:.2f} | {med(row['total']):.2f} | "
              f"{args.records / steady:,.0f} | {base / steady:.2f}x |")
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
