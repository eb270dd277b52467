"""Build throughput, in one run: the text path against the raw batched fast tokenizer, and Parquet with
embedded images against the same records as JSONL + image files.

    python benchmarks/build_throughput.py [--records 20000] [--repeats 5] [--image-records 2000]

Text path. Baseline: ``Tokenizer.encode_batch`` over the fully rendered ChatML texts (what a tokenizer
alone costs, with no validation, masks, Arrow or files). Build: ``parsit_data.build.build`` end to end on
a JSONL file of the same records (read, validate, render, tokenize with masks, write shards + manifest
+ report). The build's time is split into the report (a fixed cost: its plots) and the rest.

Images. The same image records (one PNG each) built from a Parquet file with the images embedded as
``{bytes, path}`` structs and from JSONL with the images as files under ``--image-root``.

Last line: ``build: parquet P rec/s vs jsonl J rec/s; text path R x raw encode_batch``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import parsit_data.build as build_module  # noqa: E402
from parsit_data.build import build  # noqa: E402
from parsit_data.config import BuildConfig  # noqa: E402
from parsit_data.format import bundled_qwen3_tokenizer  # noqa: E402
from parsit_data.tokenizer import load_tokenizer  # noqa: E402

WORDS = ("the report shows revenue growth of percent in the third quarter while costs fell and margins "
         "improved across all regions except the north where a new plant opened late").split()


def make_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        turns = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            q = " ".join(rng.choices(WORDS, k=rng.randint(8, 30))) + "?"
            a = " ".join(rng.choices(WORDS, k=rng.randint(20, 120))) + "."
            turns += [{"from": "human", "value": q.capitalize()}, {"from": "gpt", "value": a.capitalize()}]
        recs.append({"id": f"b{i}", "conversations": turns})
    return recs


def render(rec: dict) -> str:
    role = {"human": "user", "gpt": "assistant"}
    text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    for t in rec["conversations"]:
        text += f"<|im_start|>{role[t['from']]}\n{t['value']}<|im_end|>\n"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--image-records", type=int, default=2000, help="records of the Parquet vs JSONL comparison")
    ap.add_argument("--shard-rows", type=int, default=BuildConfig.model_fields["shard_rows"].default,
                    help="records per shard (default: the build's own default)")
    args = ap.parse_args()

    recs = make_records(args.records)
    texts = [render(r) for r in recs]
    tok = load_tokenizer(bundled_qwen3_tokenizer())
    tmp = Path(tempfile.mkdtemp(prefix="parsit-bench-"))
    src = tmp / "records.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    del recs  # the CLI's process holds no parsed copy of its inputs; neither should this one

    raw_s, build_s, raw_cpu, build_cpu, tokens, report_s, report_cpu = [], [], [], [], 0, [], []
    real_report = build_module.write_report

    def timed_report(*a, **k):
        t, c = time.perf_counter(), _cpu()
        real_report(*a, **k)
        report_s.append(time.perf_counter() - t)
        report_cpu.append(_cpu() - c)

    build_module.write_report = timed_report
    for rep in range(args.repeats):
        t0, c0 = time.perf_counter(), _cpu()
        encs = tok.encode_batch(texts, add_special_tokens=False)
        raw_s.append(time.perf_counter() - t0)
        raw_cpu.append(_cpu() - c0)
        tokens = sum(len(e.ids) for e in encs)
        del encs
        out = tmp / f"out{rep}"
        t0, c0 = time.perf_counter(), _cpu()
        m = build(BuildConfig(inputs=[str(src)], out=str(out), shard_rows=args.shard_rows))
        build_s.append(time.perf_counter() - t0)
        build_cpu.append(_cpu() - c0)
        assert m.totals.kept == args.records
        shutil.rmtree(out)
    build_module.write_report = real_report
    parquet_s, jsonl_s = _images(tmp, args)
    shutil.rmtree(tmp)

    raw, bld = statistics.median(raw_s), statistics.median(build_s)
    rep_s, rep_c = statistics.median(report_s), statistics.median(report_cpu)
    rc, bc = statistics.median(raw_cpu), statistics.median(build_cpu)
    n = args.records
    print(f"{n} records, {tokens:,} tokens, median of {args.repeats} (all runs: raw {['%.2f' % x for x in raw_s]} s, "
          f"build {['%.2f' % x for x in build_s]} s); os.getloadavg()={os.getloadavg()}")
    print(f"| {'':32} | {'samples/s':>10} | {'tokens/s':>12} | {'vs raw':>7} | {'CPU s':>7} | {'vs raw (CPU)':>12} |")
    print(f"|{'-' * 34}|{'-' * 12}|{'-' * 14}|{'-' * 9}|{'-' * 9}|{'-' * 14}|")
    print(f"| {'raw encode_batch (baseline)':32} | {n / raw:10,.0f} | {tokens / raw:12,.0f} | {1.0:7.2f} | {rc:7.2f} | {1.0:12.2f} |")
    print(f"| {'parsit-data build (end to end)':32} | {n / bld:10,.0f} | {tokens / bld:12,.0f} | {raw / bld:7.2f} | "
          f"{bc:7.2f} | {rc / bc:12.2f} |")
    print(f"| {'  of which the report (fixed)':32} | {f'{rep_s:.2f} s':>10} | {'':12} | {'':7} | {rep_c:7.2f} | {'':12} |")
    print(f"| {'  build without the report':32} | {n / (bld - rep_s):10,.0f} | {tokens / (bld - rep_s):12,.0f} | "
          f"{raw / (bld - rep_s):7.2f} | {bc - rep_c:7.2f} | {rc / (bc - rep_c):12.2f} |")
    print(f"target: build >= 0.75 x raw samples/s (wall) -> {'MET' if raw / bld >= 0.75 else 'NOT MET'} ({raw / bld:.2f})")
    m = args.image_records
    p, j = statistics.median(parquet_s), statistics.median(jsonl_s)
    print(f"\n{m} image records (one PNG each), median of {args.repeats}: parquet {['%.2f' % x for x in parquet_s]} s, "
          f"jsonl + files {['%.2f' % x for x in jsonl_s]} s")
    print(f"| {'input':32} | {'records/s':>10} | {'vs jsonl':>8} |")
    print(f"|{'-' * 34}|{'-' * 12}|{'-' * 10}|")
    print(f"| {'JSONL + image files (baseline)':32} | {m / j:10,.0f} | {1.0:8.2f} |")
    print(f"| {'Parquet, images embedded':32} | {m / p:10,.0f} | {j / p:8.2f} |")
    print(f"build: parquet {m / p:,.0f} rec/s vs jsonl {m / j:,.0f} rec/s; text path {raw / bld:.2f} x raw encode_batch")


def _images(tmp: Path, args) -> tuple[list[float], list[float]]:
    """Seconds per build of the same image records from Parquet (embedded) and from JSONL + files."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = random.Random(1)
    root = tmp / "images"
    root.mkdir()
    recs, cells = [], []
    for i, r in enumerate(make_records(args.image_records, seed=1)):
        buf = io.BytesIO()
        Image.frombytes("RGB", (32, 24), rng.randbytes(32 * 24 * 3)).resize((320, 240)).save(buf, format="PNG")
        (root / f"i{i}.png").write_bytes(buf.getvalue())
        r["conversations"][0]["value"] = "<image>\n" + r["conversations"][0]["value"]
        recs.append({**r, "image": f"i{i}.png"})
        cells.append({"bytes": buf.getvalue(), "path": f"i{i}.png"})
    (tmp / "img.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    pq.write_table(pa.table({"id": [r["id"] for r in recs], "image": pa.array(cells, pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())])), "conversations": [r["conversations"] for r in recs]}),
        tmp / "img.parquet", row_group_size=1000)
    parquet_s, jsonl_s = [], []
    for rep in range(args.repeats):
        for src, times in ((tmp / "img.parquet", parquet_s), (tmp / "img.jsonl", jsonl_s)):
            out = tmp / f"img-out{rep}"
            t0 = time.perf_counter()
            m = build(BuildConfig(inputs=[str(src)], out=str(out), image_root=str(root), shard_rows=args.shard_rows,
                                  engine="local"))  # the same engine for both (auto would pick Ray for the larger file)
            times.append(time.perf_counter() - t0)
            assert m.totals.kept == args.image_records, m.totals
            shutil.rmtree(out)
    return parquet_s, jsonl_s


def _cpu() -> float:
    """CPU seconds of this process, all threads: steadier than wall time on a loaded machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


if __name__ == "__main__":
    main()
