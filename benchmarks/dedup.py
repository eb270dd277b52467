"""Near duplicates (issue 21): signature speed, the global pass at scale against all pairs, the build's cost.

    python benchmarks/dedup.py [--rows 1000000] [--images 300] [--texts 5000] [--build-records 1500] [--repeats 3]

1. quality that chose the defaults: image-hash distance of planted copies (re-encode, resize, crops of 1-5%)
   against other images of one template, for pHash-64, the 256-bit hash, and the 256-bit hash with crop
   views (the default); text: one-word edits against same-question-other-answer pairs, char 5-grams vs
   word 3-grams;
2. images hashed per second per core (on decoded 640x480 images, as the build has them), texts signed per
   second per core (conversation MinHash plus one per user turn, as the build does);
3. the global pass on ``--rows`` synthetic signatures (1% planted copies) against the all-pairs baseline
   timed on a sample and scaled by pairs (CPU seconds: numpy here is single-threaded, and CPU time does not
   depend on what else the machine runs);
4. the build's wall time with --near-duplicates report vs off, same data, same run, alternating.

Last line: ``dedup: +X% build time, I img/s/core, T texts/s/core, global pass G s per 1M rows``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "data"))

from dedup_support import KINDS, decode, jpeg, png  # noqa: E402
from parsit_data.build import build  # noqa: E402
from parsit_data.config import BuildConfig  # noqa: E402
from parsit_data.dedup.global_pass import Signatures, Thresholds, near_duplicates  # noqa: E402
from parsit_data.dedup.index import hamming  # noqa: E402
from parsit_data.dedup.signatures import (NUM_PERM, PHASH_BYTES, VIEWS, SignatureRows, minhash, normalize, phash,  # noqa: E402
                                          text_signatures, word_shingles)
from parsit_data.records import Turn  # noqa: E402


def _cpu() -> float:
    return time.process_time()


# -- 1. quality -----------------------------------------------------------------------------------
def _crop(pct):
    def f(img):
        dx, dy = img.width * pct // 100, img.height * pct // 100
        return png(img.crop((dx, dy, img.width - dx, img.height - dy)))
    return f


TRANSFORMS = {"jpeg q60": lambda im: jpeg(im, 60), "resize 2/3": lambda im: png(im.resize((im.width * 2 // 3,
                                                                                              im.height * 2 // 3))),
              "crop 1%": _crop(1), "crop 2%": _crop(2), "crop 3%": _crop(3), "crop 5%": _crop(5)}
HASHES = {"pHash-64": dict(side=32, low=8, scales=(1.0,)), "256-bit": dict(side=64, low=16, scales=(1.0,)),
          "256-bit + crop views (default)": {}}


def image_quality(n: int = 10) -> None:
    print("\n## image hash: worst planted copy vs closest other image of the same template (bits; * = separable)")
    for name, kw in HASHES.items():
        bits = (kw.get("low", 16) ** 2)
        views = len(kw.get("scales", (0,) * VIEWS))

        def h(img):
            return np.frombuffer(phash(img, **kw), np.uint8).reshape(1, views, -1)
        print(f"\n{name} ({bits} bits, {views} view(s))")
        print("| kind | " + " | ".join(TRANSFORMS) + " | other image, same template (min) |")
        print("|---|" + "---|" * (len(TRANSFORMS) + 1))
        for kind, fn in KINDS.items():
            imgs = [fn(s) for s in range(n)]
            hs = np.concatenate([h(im) for im in imgs])
            i, j = np.triu_indices(n, 1)
            neg = int(hamming(hs[i], hs[j]).min())
            cells = []
            for t in TRANSFORMS.values():
                worst = max(int(hamming(h(im), h(decode(t(im))))[0]) for im in imgs)
                cells.append(f"{worst}{'*' if worst < neg else ''}")
            print(f"| {kind} | " + " | ".join(cells) + f" | {neg} |")


def text_quality(n: int = 300) -> None:
    words = "the chart shows total revenue for each region in the last quarter and the answer is north".split()
    r = random.Random(0)

    def conv():
        q = (f"What is the {r.choice(['total', 'average', 'maximum'])} {r.choice(['revenue', 'cost', 'margin'])} "
             f"of the {r.choice(['north', 'south', 'east', 'west'])} region in {r.randrange(1990, 2024)}?")
        return q, " ".join(r.choice(words) for _ in range(r.randrange(3, 25)))

    print("\n## text: one-word edit (recall) vs same question, other answer (false positives)")
    print("| shingles | threshold | recall | false positives |\n|---|---|---|---|")
    pairs = []
    for _ in range(n):
        q, a = conv()
        w = a.split(" ")
        w[r.randrange(len(w))] = "zebra"
        pairs.append((q + "\n" + a, q + "\n" + " ".join(w), q + "\n" + conv()[1]))
    default = ("5-byte shingles (default)", lambda ts: list(text_signatures(ts)))
    words = ("word 3-grams", lambda ts: [minhash(word_shingles(normalize(t))) for t in ts])
    for name, fn in (default, words):
        sig = [fn(list(p)) for p in pairs]
        pos = np.array([(a == b).mean() for a, b, _ in sig])
        neg = np.array([(a == c).mean() for a, _, c in sig])
        for th in (0.6, 0.7, 0.8):
            print(f"| {name} | {th} | {np.mean(pos >= th):.3f} | {np.mean(neg >= th):.3f} |")


# -- 2. speed -------------------------------------------------------------------------------------
def image_rate(n: int) -> float:
    imgs = [decode(jpeg(KINDS[k](s, size=(640, 480)) if k != "document" else KINDS[k](s, size=(600, 800))))
            for s in range(max(n // 4, 1)) for k in KINDS]
    t = _cpu()
    for im in imgs:
        phash(im)
    return len(imgs) / (_cpu() - t)


def text_rate(n: int, user_turns: bool) -> float:
    from build_throughput import make_records  # noqa: E402 - benchmarks/ is on the path as this script's folder

    recs = make_records(n)
    role = {"human": "user", "gpt": "assistant"}
    turns = [[Turn(role[t["from"]], t["value"]) for t in rec["conversations"]] for rec in recs]
    rows = SignatureRows(user_turns=user_turns)
    t = _cpu()
    for k, ts in enumerate(turns):
        rows.add(str(k), k, ts, [])
    rows.to_table()  # where the texts are signed, in one batch
    return n / (_cpu() - t)


# -- 3. the global pass at scale ------------------------------------------------------------------
def synthetic(n: int, seed: int = 0) -> Signatures:
    """n rows, one image each; 1% are near copies of an earlier row (a few bits and MinHash slots changed)."""
    rng = np.random.default_rng(seed)
    text = rng.integers(0, 2**32, size=(n, NUM_PERM), dtype=np.uint32)
    img = rng.integers(0, 256, size=(n, VIEWS, PHASH_BYTES), dtype=np.uint8)
    copies = np.sort(rng.choice(np.arange(1, n), size=n // 100, replace=False))
    originals = np.setdiff1d(np.arange(n), copies)  # a copy's source is an original row before it
    src = originals[(np.searchsorted(originals, copies) * rng.random(len(copies))).astype(np.int64)]
    text[copies] = text[src]
    slots = rng.integers(0, NUM_PERM, size=(len(copies), 20))
    text[copies[:, None], slots] = rng.integers(0, 2**32, size=slots.shape, dtype=np.uint32)  # J ~ 0.85
    img[copies] = img[src]
    flip = rng.integers(0, PHASH_BYTES, size=(len(copies), 6))
    img[copies[:, None], :, flip] ^= np.uint8(1)  # 6 bits per view
    e = np.zeros(0, np.int64)
    return Signatures(np.zeros(n, np.int64), np.arange(n), ["s"] * n, [str(i) for i in range(n)], np.arange(n),
                      text, img, np.arange(n + 1, dtype=np.int64), np.zeros((0, NUM_PERM), np.uint32), e, e)


def pairwise(sig: Signatures, th: Thresholds) -> tuple[int, int]:
    """All pairs (i < j) of ``sig``: (pairs compared, near-duplicate pairs found)."""
    n, found, compared = sig.n, 0, 0
    for i in range(n - 1):
        j = np.arange(i + 1, n)
        jac = (sig.text[j] == sig.text[i]).mean(axis=1)
        d = hamming(np.broadcast_to(sig.img_hash[i], (len(j), VIEWS, PHASH_BYTES)), sig.img_hash[j])
        found += int(((jac >= th.text_jaccard) & (d <= th.image_bits)).sum())
        compared += len(j)
    return compared, found


def global_pass_bench(rows: int, sample: int) -> float:
    th = Thresholds()
    print(f"\n## global pass: {rows:,} rows of synthetic signatures (1% planted copies), one image each")
    sig = synthetic(rows)
    t, c = time.perf_counter(), _cpu()
    f = near_duplicates(sig, th)
    wall, g = time.perf_counter() - t, _cpu() - c
    print(f"LSH + tables: {g:.1f} CPU s ({wall:.1f} s wall on this shared machine), {len(f.dup_of):,} copies found "
          f"of {rows // 100:,} planted ({len(f.dup_of) / (rows // 100):.1%} recall)")
    small = synthetic(sample, seed=1)
    t = _cpu()
    fs = near_duplicates(small, th)
    gs = _cpu() - t
    t = _cpu()
    compared, found = pairwise(small, th)
    ps = _cpu() - t
    scale = rows * (rows - 1) / (sample * (sample - 1))
    print("| method | rows | CPU seconds | copies found |\n|---|---|---|---|")
    print(f"| all pairs | {sample:,} | {ps:.2f} | {found} |")
    print(f"| LSH + tables | {sample:,} | {gs:.2f} | {len(fs.pairs)} |")
    print(f"| all pairs (scaled by pairs) | {rows:,} | {ps * scale:,.0f} | - |")
    print(f"| LSH + tables | {rows:,} | {g:.1f} | {len(f.pairs)} |")
    return g * 1_000_000 / rows


# -- 4. the build with and without ----------------------------------------------------------------
def build_overhead(records: int, repeats: int) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="dedup-bench-"))
    try:
        root = tmp / "images"
        root.mkdir()
        r = random.Random(0)
        for s in range(200):
            (root / f"{s}.jpg").write_bytes(jpeg(KINDS[list(KINDS)[s % 4]](s, size=(640, 480))))
        # A realistic vocabulary: with a dozen words every text shares most 5-byte shingles with every other.
        words = ["".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 9))) for _ in range(5000)]
        lines = []
        for i in range(records):
            q = " ".join(r.choices(words, k=12)) + "?"
            a = " ".join(r.choices(words, k=60)) + "."
            rec = {"id": f"r{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
            if i % 2 == 0:  # half the rows have an image
                rec["image"] = f"{i % 200}.jpg"
                rec["conversations"][0]["value"] = "<image>\n" + q
            lines.append(json.dumps(rec))
        src = tmp / "in.jsonl"
        src.write_text("\n".join(lines) + "\n")
        times = {"off": [], "report": []}
        cpu = {"off": [], "report": []}
        build(BuildConfig(inputs=[str(src)], image_root=str(root), out=str(tmp / "warm")))  # imports, tokenizer
        for k in range(repeats):
            for mode in ("off", "report") if k % 2 == 0 else ("report", "off"):
                out = tmp / f"out-{mode}-{k}"
                t, c = time.perf_counter(), _cpu()
                build(BuildConfig(inputs=[str(src)], image_root=str(root), out=str(out), near_duplicates=mode))
                times[mode].append(time.perf_counter() - t)
                cpu[mode].append(_cpu() - c)
                shutil.rmtree(out)
        off, on = statistics.median(times["off"]), statistics.median(times["report"])
        coff, con = statistics.median(cpu["off"]), statistics.median(cpu["report"])
        print(f"\n## build, {records:,} records (half with a 640x480 JPEG), median of {repeats}, alternating")
        print("| --near-duplicates | wall s | CPU s (this process, all threads) |\n|---|---|---|")
        print(f"| off | {off:.2f} | {coff:.2f} |\n| report | {on:.2f} | {con:.2f} |")
        print(f"ratio wall {on / off:.3f}, CPU {con / coff:.3f} (target <= 1.25)")
        return on / off - 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=3000, help="rows of the all-pairs baseline")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--texts", type=int, default=5000)
    ap.add_argument("--build-records", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--build-only", action="store_true", help="only part 4 (the build with and without)")
    args = ap.parse_args()
    if args.build_only:
        build_overhead(args.build_records, args.repeats)
        return
    image_quality()
    text_quality()
    ips = image_rate(args.images)
    text_rate(500, True)  # warm-up: first-call costs (allocations, lazy imports) are not the rate
    tps = text_rate(args.texts, False)
    tps_eval = text_rate(args.texts, True)
    print(f"\n## signatures (CPU time, one core)\nimages hashed: {ips:,.0f}/s/core\ntexts signed: {tps:,.0f}/s/core "
          f"(conversation; {tps_eval:,.0f}/s/core with one more per user turn, as with --eval-set)")
    g = global_pass_bench(args.rows, args.sample)
    over = build_overhead(args.build_records, args.repeats)
    print(f"dedup: {over * 100:+.0f}% build time, {ips:,.0f} img/s/core, {tps:,.0f} texts/s/core, "
          f"global pass {g:.1f} s per 1M rows")


if __name__ == "__main__":
    main()
