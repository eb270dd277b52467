"""Time to the first optimizer step with 1 and 2 ranks on one build: shards hashed by every rank
(the old behaviour) versus once, in ``parsit-train launch``, versus not at all (``data.verify: size``).

    python benchmarks/startup.py [--mb 80] [--ranks 1 2] [--keep DIR]

It generates a build of about ``--mb`` MB (noise PNGs, which do not compress, embedded in the shards by
the real builder), then runs ``launch`` for a 1-step run of the tiny test model (2 CPU ranks, gloo) in
each mode. "first step" is the time from calling launch to rank 0 writing step 1 to metrics.jsonl;
"exit" adds the final checkpoint and the shutdown. The baseline (every rank hashes) is reached with the
``PARSIT_VERIFY_EVERY_RANK=1`` benchmark hook and launch's own check turned off.

Caveat: the shards were just written, so they are in the page cache and hashing runs at memory speed
(sha256, about 0.5-1 GB/s per core). On a cold store the hashing is bounded by the disk or network, and
the baseline reads ``ranks x build size`` bytes before step 1: 8 ranks on a 1 TB build read 8 TB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
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


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(build: Path, work: Path, nproc: int, mode: str) -> tuple[float, float]:
    from parsit_train.launch import LaunchSpec, launch

    verify, in_launch, every_rank = MODES[mode]
    out = work / f"out-{nproc}-{verify}-{int(in_launch)}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = tiny_config(build, out, data={"builds": [str(build)], "verify": verify},
                      optim={"micro_batch_size": 1, "max_steps": 1}, logging={"tensorboard": False, "sample_ids": False})
    path = write_config(work / "train.yaml", cfg)
    os.environ.pop("PARSIT_VERIFY_EVERY_RANK", None)
    if every_rank:
        os.environ["PARSIT_VERIFY_EVERY_RANK"] = "1"
    t0 = time.time()
    try:
        launch(LaunchSpec(config=path, nproc=nproc, master_port=_port(), timeout_s=600, verify=in_launch))
    finally:
        os.environ.pop("PARSIT_VERIFY_EVERY_RANK", None)
    t1 = time.time()
    return (out / "metrics.jsonl").stat().st_mtime - t0, t1 - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=80, help="approximate build size in MB")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    work = args.keep or Path(tempfile.mkdtemp(prefix="parsit-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build = make_big_build(work / "data", args.mb)
    size = sum(p.stat().st_size for p in (build / "shards").glob("*"))
    print(f"build: {size / 2**20:.0f} MB in {len(list((build / 'shards').glob('*')))} shards "
          f"(made in {time.perf_counter() - t0:.0f}s)")

    from parsit_data.shards import sha256_file

    t0 = time.perf_counter()
    for p in sorted((build / "shards").glob("*")):
        sha256_file(p)
    hash_s = time.perf_counter() - t0
    print(f"sha256 of the build, one process, page cache warm: {hash_s:.2f}s ({size / 2**20 / hash_s:.0f} MB/s)\n")

    rows = []
    for nproc in args.ranks:
        for mode in MODES:
            first, done = run_once(build, work, nproc, mode)
            verify, in_launch, every_rank = MODES[mode]
            hashed = size * nproc if every_rank else (size if verify == "full" else 0)
            rows.append((nproc, mode, hashed / 2**20, first, done))
            print(f"  {nproc} rank(s), {mode}: first step {first:.1f}s", flush=True)

    print()
    print(f"| ranks | shard verification          | MB hashed | first step (s) | exit (s) |")
    print(f"|------:|-----------------------------|----------:|---------------:|---------:|")
    for nproc, mode, mb, first, done in rows:
        print(f"| {nproc:5d} | {mode:27s} | {mb:9.0f} | {first:14.1f} | {done:8.1f} |")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
