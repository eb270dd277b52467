"""Records/s of ``parsit-data validate`` with and without image checks, next to a naive baseline.

Generates N records with one image each (PNG and JPEG, half each, with texture so the files are
realistic), then times, end to end (read JSONL, validate, check images, account):

- ``no image checks``: the same records with their image fields and placeholders removed;
- ``header``:  ``--image-check header`` (open + header parse + pixel limit; no decode);
- ``full``:    ``--image-check full`` (every image decoded once, under the pixel limit);
- ``build-load``: the build's per-record path (``check_item(load=True)``: reads the bytes it embeds);
- ``baseline``: what LLaVA-style loaders do per sample: ``Image.open(path).convert("RGB")``, no checks.

Usage: python benchmarks/validate_throughput.py [--n 3000] [--size 512x384] [--workdir /tmp/parsit-bench]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from parsit_data.images import ImageOptions  # noqa: E402
from parsit_data.precheck import precheck  # noqa: E402
from parsit_data.sources import expand_inputs, iter_source  # noqa: E402
from parsit_data.templates import get_template  # noqa: E402
from parsit_data.validate import ValidationOptions, check_item, control_tokens_of  # noqa: E402


def make_data(work: Path, n: int, size: tuple[int, int]) -> tuple[Path, Path, Path]:
    root = work / "images"
    root.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(0)
    noise = Image.effect_noise(size, 40).convert("RGB")
    with_images, text_only = work / "with_images.jsonl", work / "text_only.jsonl"
    with open(with_images, "w") as fa, open(text_only, "w") as fb:
        for i in range(n):
            name = f"img_{i:05d}.{'png' if i % 2 else 'jpg'}"
            p = root / name
            if not p.exists():
                base = Image.new("RGB", size, (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
                Image.blend(base, noise, 0.3).save(p, quality=90) if name.endswith("jpg") else \
                    Image.blend(base, noise, 0.3).save(p)
            q = f"What is shown in document {i}? Answer with its title and the date printed at the top."
            a = f"It is document {i}, titled 'Quarterly report', dated 2024-0{i % 9 + 1}-1{i % 10}."
            conv = [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}]
            fa.write(json.dumps({"id": f"r{i}", "image": name, "conversations": conv}) + "\n")
            conv[0] = {"from": "human", "value": q}
            fb.write(json.dumps({"id": f"r{i}", "conversations": conv}) + "\n")
    return root, with_images, text_only


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--size", default="512x384")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/parsit-bench-validate"))
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs per mode")
    args = ap.parse_args()
    w, h = map(int, args.size.lower().split("x"))
    t0 = time.perf_counter()
    root, with_images, text_only = make_data(args.workdir, args.n, (w, h))
    console = Console()
    console.print(f"data: {args.n} records, {args.n} images {w}x{h} (png/jpg), made in "
                  f"{time.perf_counter() - t0:.1f}s", highlight=False)
    vopts = ValidationOptions(control_tokens_of(get_template("qwen_1_5")))

    def run_precheck(inp: Path, mode: str) -> float:
        res = precheck([inp], vopts=vopts, iopts=ImageOptions(root=root, check=mode))
        assert res.rejected == 0, res.stats.to_json()
        return res.seconds

    def run_build_load() -> float:
        t = time.perf_counter()
        (spec,) = expand_inputs([with_images])
        opts = ImageOptions(root=root, check="full")
        for item in iter_source(spec):
            check_item(item, vopts, opts, load=True)
        return time.perf_counter() - t

    def run_baseline() -> float:
        t = time.perf_counter()
        with open(with_images) as f:
            for line in f:
                rec = json.loads(line)
                Image.open(root / rec["image"]).convert("RGB")
        return time.perf_counter() - t

    modes = [
        ("no image checks", 0, lambda: run_precheck(text_only, "full")),
        ("header", args.n, lambda: run_precheck(with_images, "header")),
        ("full", args.n, lambda: run_precheck(with_images, "full")),
        ("build-load (full, bytes kept)", args.n, run_build_load),
        ("baseline: PIL open+convert, no checks", args.n, run_baseline),
    ]
    table = Table(title=f"validation throughput ({args.n} records, best of {args.repeat})")
    for col in ("mode", "images", "seconds", "records/s"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for name, n_img, fn in modes:
        best = min(fn() for _ in range(args.repeat))
        table.add_row(name, str(n_img), f"{best:.2f}", f"{args.n / best:,.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
