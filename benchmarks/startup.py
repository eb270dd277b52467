"""Time to the first optimizer step with 1 and 2 ranks on one build: shards hashed by every rank
(the old behaviour) versus once, in ``parsit-train launch``, versus not at all (``data.verify: size``).

    python benchmarks/startup.py [--mb 80] [--ranks 1 2] [--keep DIR]

It generates a build of about ``--mb`` MB (noise PNGs, which do not compress, embedded in the shards by
the real builder), then runs ``launch`` for a 1-step run of the tiny test model (2 CPU ranks, gloo) in
each mode. "launch check" is launch's own check before it starts torchrun, "ranks' data ready" the slowest rank's
time from opening the builds to agreeing they are fine (both logged by parsit), "first step" the time
from starting ``parsit-train launch`` to rank 0 writing step 1 to metrics.jsonl, "exit" adds the final
checkpoint and the shutdown. The baseline (every rank hashes) is reached with the benchmark hooks
``PARSIT_VERIFY_EVERY_RANK=1`` and ``PARSIT_LAUNCH_NO_VERIFY=1`` (launch's own check turned off).

Caveat: the shards were just written, so they are in the page cache and hashing runs at memory speed
(sha256, about 0.5-1 GB/s per core). On a cold store the hashing is bounded by the disk or network, and
the baseline reads ``ranks x build size`` bytes before step 1: 8 ranks on a 1 TB build read 8 TB.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
               "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "train"))
from train_helpers import IMAGE_SIZE, PATCH_SIZE, tiny_config, write_config  # noqa: E402

MODES = {  # name: (data.verify, launch verifies, every rank hashes)
    "every rank hashes (before)": ("full", False, True),
    "once, in launch (now)": ("full", True, False),
    "data.verify: size": ("size", True, False),
}


def make_big_build(root: Path, mb: int) -> Path:
    import json

    import numpy as np
    from PIL import Image

    from parsit_data.build import build
    from parsit_data.config import BuildConfig

    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    records, total, i = [], 0, 0
    while total < mb * 2**20:
        path = images / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(path, compress_level=1)
        total += path.stat().st_size
        records.append({"id": f"n{i:05d}", "image": path.name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the picture."},
            {"from": "gpt", "value": f"Noise number {i}."}]})
        i += 1
    src = root / "records.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = root / "build"
    build(BuildConfig(inputs=[str(src)], out=str(out), image_root=str(images), image_size=IMAGE_SIZE,
                      patch_size=PATCH_SIZE, max_length=256, shard_rows=16))
    return out


def run_once(build: Path, work: Path, nproc: int, mode: str) -> dict:
    """One 1-step ``parsit-train launch`` (the real CLI, in a subprocess) in ``mode``."""
    verify, in_launch, every_rank = MODES[mode]
    out = work / f"out-{nproc}-{verify}-{int(in_launch)}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = tiny_config(build, out, data={"builds": [str(build)], "verify": verify},
                      optim={"micro_batch_size": 1, "max_steps": 1}, logging={"tensorboard": False, "sample_ids": False})
    path = write_config(work / "train.yaml", cfg)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("PARSIT_VERIFY_EVERY_RANK", None)
    if every_rank:
        env["PARSIT_VERIFY_EVERY_RANK"] = "1"
    if not in_launch:
        env["PARSIT_LAUNCH_NO_VERIFY"] = "1"
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "parsit_train.cli.main", "launch", "--config", str(path),
                          "--nproc", str(nproc)], env=env, capture_output=True, text=True, timeout=900)
    done = time.time() - t0
    if res.returncode != 0:
        raise SystemExit(f"launch failed ({res.returncode}):\n{res.stderr[-3000:]}")
    check = re.search(r"data checked in ([0-9.]+)s", res.stderr)
    ready = [float(x) for x in re.findall(r"rank \d+: data ready in ([0-9.]+)s", res.stderr)]
    return {"launch_check": float(check.group(1)) if check else 0.0, "ranks_ready": max(ready),
            "first": (out / "metrics.jsonl").stat().st_mtime - t0, "exit": done}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=80, help="approximate build size in MB")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="parsit-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build = make_big_build(work / "data", args.mb)
    size = sum(p.stat().st_size for p in (build / "shards").glob("*"))
    print(f"build: {size / 2**20:.0f} MB in {len(list((build / 'shards').glob('*')))} shards "
          f"(made in {time.perf_counter() - t0:.0f}s)")

    from parsit_data.format import sha256_file

    t0 = time.perf_counter()
    for p in sorted((build / "shards").glob("*")):
        sha256_file(p)
    hash_s = time.perf_counter() - t0
    print(f"sha256 of the build, one process, page cache warm: {hash_s:.2f}s ({size / 2**20 / hash_s:.0f} MB/s)\n")

    rows = []
    for nproc in args.ranks:
        for mode in MODES:
            r = run_once(build, work, nproc, mode)
            verify, in_launch, every_rank = MODES[mode]
            r["mb"] = (size * nproc if every_rank else (size if verify == "full" else 0)) / 2**20
            rows.append((nproc, mode, r))
            print(f"  {nproc} rank(s), {mode}: {r}", flush=True)

    print()
    print("| ranks | shard verification         | MB hashed | launch check (s) | ranks' data ready (s, max) "
          "| first step (s) | exit (s) |")
    print("|------:|----------------------------|----------:|-----------------:|---------------------------:"
          "|---------------:|---------:|")
    for nproc, mode, r in rows:
        print(f"| {nproc:5d} | {mode:26s} | {r['mb']:9.0f} | {r['launch_check']:16.2f} | {r['ranks_ready']:26.2f} "
              f"| {r['first']:14.1f} | {r['exit']:8.1f} |")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
