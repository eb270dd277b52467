"""Parsit's loader versus LLaVA-style per-item preparation: samples/s and per-worker memory.

What is compared, on the same records and images, the same DataLoader settings (workers, batch size,
prefetch), in one run:

- ``parsit``: ``build_dataloader`` over a build made with ``image_max_side`` (images re-encoded at build
  time; tokens precomputed): per item it slices token ids out of a memory-mapped shard and decodes one
  small embedded image.
- ``llava``: what LLaVA-style ``LazySupervisedDataset.__getitem__`` does per item: the whole JSON list in
  memory, open the ORIGINAL image file, pad to square with the mean colour, ``SiglipImageProcessor``
  (resize + rescale + normalise), tokenise the conversation turn by turn with the HF tokenizer and
  build labels; collate with ``pad_sequence`` and ``attention_mask = input_ids.ne(pad)``.
- ``llava-fastimg`` (for attribution, not the target): the same per-item work as ``llava`` but with
  Parsit's own PIL+numpy image code on the original file, so the table shows how much of the gain
  comes from re-encoding + precomputed tokens and how much from avoiding the HF image processor.

Memory: per-worker peak RSS (``VmHWM``) and peak anonymous RSS (``RssAnon``: memory the worker owns,
as opposed to file pages of the mapped shards that live in the shared page cache), after the same
number of batches, for builds of two sizes (text-only rows, so the big build is quick).

Run (about 3-4 minutes on 2 cores with the defaults)::

    python benchmarks/loader_throughput.py --rows 600 --workers 2 --rss-rows 10000 200000
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.nn.utils.rnn import pad_sequence  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from parsit_data.build import build  # noqa: E402
from parsit_data.config import BuildConfig  # noqa: E402
from parsit_data.format import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402
from parsit_data.format import bundled_qwen3_tokenizer  # noqa: E402
from parsit_train.config import DataConfig, DataLoaderConfig  # noqa: E402
from parsit_train.data import BatchSpec, ImageProcessor, build_dataloader, open_view, seed_worker  # noqa: E402

QWEN_IMAGE_PAD = 151655
SYSTEM = "You are a helpful assistant."
WORDS = ("invoice total amount due date account balance payment reference customer address page section "
         "table figure revenue quarter growth summary report annual statement").split()


# -- data -------------------------------------------------------------------------------------------

def _answer(i: int, n_words: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n_words)) + "."


def make_image_records(folder: Path, rows: int, size: tuple[int, int], seed: int = 0) -> tuple[Path, Path]:
    """``rows`` distinct JPEG "documents" of ``size`` and a LLaVA-format JSON list referring to them."""
    img_dir = folder / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.full((h, w, 3), 245, dtype=np.uint8)
    records = []
    for i in range(rows):
        path = img_dir / f"doc-{i:06d}.jpg"
        if not path.exists():
            arr = base.copy()
            for _ in range(12):  # dark "text lines" and a coloured "figure": realistic JPEG sizes
                y, x = int(rng.integers(0, h - 20)), int(rng.integers(0, w // 2))
                arr[y : y + 12, x : x + int(rng.integers(w // 4, w // 2))] = rng.integers(0, 80)
            y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            arr[y : y + h // 4, x : x + w // 4] = rng.integers(0, 255, (h // 4, w // 4, 3), dtype=np.uint8)
            Image.fromarray(arr).save(path, quality=90)
        records.append({
            "id": f"doc-{i}",
            "image": path.name,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat does this page say about the totals?"},
                {"from": "gpt", "value": _answer(i, 40 + i % 30)},
                {"from": "human", "value": "And the date?"},
                {"from": "gpt", "value": _answer(i + 1, 10 + i % 7)},
            ],
        })
    src = folder / "records.json"
    src.write_text(json.dumps(records))
    return src, img_dir


def make_text_records(folder: Path, rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "records.jsonl"
    with open(src, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"t-{i}", "conversations": [
                {"from": "human", "value": f"Question {i}: what is the balance?"},
                {"from": "gpt", "value": _answer(i, 8 + i % 24)}]}) + "\n")
    return src


def run_build(src: Path, out: Path, image_root: Path | None, args, image_max_side: int | None) -> Path:
    if (out / "manifest.json").is_file():
        return out  # reuse a build from an earlier run with --workdir
    build(BuildConfig(inputs=[str(src)], out=str(out), tokenizer=str(bundled_qwen3_tokenizer()),
                      image_root=str(image_root) if image_root else None, image_size=args.image_size,
                      patch_size=args.patch_size, image_max_side=image_max_side, shard_rows=4096,
                      overwrite=True))
    return out


# -- the LLaVA-style baseline -------------------------------------------------------------------------

def expand2square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), background)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


class LlavaStyleDataset(Dataset):
    """LLaVA's LazySupervisedDataset, reduced to what it does per item (qwen template, one image)."""

    def __init__(self, json_path: Path, image_folder: Path | None, tokenizer_path: Path, image_size: int,
                 fast_images: bool):
        from transformers import AutoTokenizer, SiglipImageProcessor

        with open(json_path) as f:  # LLaVA keeps every record in memory
            self.list_data_dict = json.load(f) if json_path.suffix == ".json" else [json.loads(x) for x in f]
        self.image_folder = image_folder
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
        self.processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
        self.fast = ImageProcessor({"image_size": image_size, "patch_size": 14, "aspect": "pad"}) if fast_images else None

    def __len__(self) -> int:
        return len(self.list_data_dict)

    def _tokenize(self, conversations: list[dict]) -> tuple[list[int], list[int]]:
        """preprocess_qwen: role headers and each turn tokenized on its own; <image> becomes -200."""
        tok = self.tokenizer
        im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
        nl = tok("\n").input_ids
        ids = [im_start] + tok("system").input_ids + nl + tok(SYSTEM).input_ids + [im_end] + nl
        labels = [IGNORE_INDEX] * len(ids)
        for turn in conversations:
            role = "user" if turn["from"] == "human" else "assistant"
            head = [im_start] + tok(role).input_ids + nl
            body = []
            for j, piece in enumerate(turn["value"].split("<image>")):
                if j:
                    body.append(IMAGE_TOKEN_INDEX)
                body += tok(piece).input_ids if piece else []
            turn_ids = head + body + [im_end] + nl
            ids += turn_ids
            labels += ([IGNORE_INDEX] * len(turn_ids) if role == "user"
                       else [IGNORE_INDEX] * len(head) + body + [im_end] + [IGNORE_INDEX] * len(nl))
        return ids, labels

    def __getitem__(self, i: int) -> dict:
        source = self.list_data_dict[i]
        path = self.image_folder / source["image"] if "image" in source else None
        if path is None:
            pixels = None
        elif self.fast is not None:  # Parsit's PIL+numpy image code, on the original file
            data = path.read_bytes()
            pixels = torch.from_numpy(self.fast.process_sample([data], [Image.open(path).size], source["id"])[0][0])
        else:
            image = Image.open(path).convert("RGB")
            mean = tuple(int(x * 255) for x in self.processor.image_mean)
            image = expand2square(image, mean)
            pixels = self.processor.preprocess(image, return_tensors="pt")["pixel_values"][0]
        ids, labels = self._tokenize(source["conversations"])
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "image": pixels,
                "id": source["id"]}


def llava_collate(items: list[dict], pad_id: int) -> dict:
    input_ids = pad_sequence([it["input_ids"] for it in items], batch_first=True, padding_value=pad_id)
    labels = pad_sequence([it["labels"] for it in items], batch_first=True, padding_value=IGNORE_INDEX)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": input_ids.ne(pad_id),
            "images": torch.stack(imgs) if (imgs := [it["image"] for it in items if it["image"] is not None]) else None,
            "sample_ids": [it["id"] for it in items]}


def llava_loader(src: Path, img_dir: Path, args, fast: bool) -> DataLoader:
    ds = LlavaStyleDataset(src, img_dir, bundled_qwen3_tokenizer(), args.image_size, fast)
    g = torch.Generator().manual_seed(args.seed)
    return DataLoader(ds, batch_size=args.batch_size, shuffle=True, generator=g, num_workers=args.workers,
                      collate_fn=functools.partial(llava_collate, pad_id=ds.tokenizer.pad_token_id),
                      worker_init_fn=functools.partial(seed_worker, seed=args.seed, rank=0),
                      prefetch_factor=args.prefetch, persistent_workers=False, drop_last=True)


def parsit_loader(build_dir: Path, args, workers: int | None = None, batch_size: int | None = None):
    loader = build_dataloader(
        open_view([build_dir], bundled_qwen3_tokenizer(), max_length=args.max_length), DataConfig(builds=[str(build_dir)]),
        DataLoaderConfig(num_workers=args.workers if workers is None else workers, prefetch_factor=args.prefetch,
                         persistent_workers=False),
        BatchSpec(batch_size=batch_size or args.batch_size, image_token_id=QWEN_IMAGE_PAD, seed=args.seed))
    return loader, loader.sampler


# -- measurement ---------------------------------------------------------------------------------------

def _cpu_seconds() -> float:
    """CPU time of this process and all its children (the DataLoader workers), user + system."""
    import psutil

    procs = [psutil.Process()] + psutil.Process().children(recursive=True)
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def time_epoch(loader, batches: int, warmup: int, batch_size: int) -> tuple[float, float]:
    """(samples/s, CPU ms per sample) over ``batches`` batches, after ``warmup`` batches (worker start-up,
    first prefetch). CPU time per sample is robust to other load on the machine; samples/s is not.
    Workers are not persistent here: deleting the iterator stops them, so a loader's prefetched work never
    runs during the next loader's measurement (persistent workers would finish it in the background)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    c0, t0 = _cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    del it
    n = batches * batch_size
    return n / elapsed, cpu / n * 1000


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def worker_memory(dataloader: DataLoader, batches: int) -> dict[str, float]:
    """Iterate ``batches`` batches; per-worker peak RSS (VmHWM) and peak anonymous RSS, MiB, max over workers."""
    it = iter(dataloader)
    peak_anon: dict[int, int] = {}
    pids: list[int] = []
    for _ in range(batches):
        next(it)
        if not pids:
            pids = [w.pid for w in it._workers] if hasattr(it, "_workers") else _child_pids()
        for pid in pids:
            peak_anon[pid] = max(peak_anon.get(pid, 0), _status(pid)["RssAnon"])
    hwm = {pid: _status(pid)["VmHWM"] for pid in pids}
    del it
    mib = 1 << 20
    return {"peak_rss": max(hwm.values()) / mib, "peak_anon": max(peak_anon.values()) / mib}


def rss_child(kind: str, path: Path, args) -> dict:
    """In a fresh process (so both sizes start from the same parent): build the loader, measure its workers."""
    if kind == "parsit":
        loader, _ = parsit_loader(path, args, batch_size=args.rss_batch_size)
        dl = loader.dataloader
    else:
        args.batch_size = args.rss_batch_size
        dl = llava_loader(path, None, args, fast=False)
    return worker_memory(dl, args.rss_batches)


def run_rss_child(kind: str, path: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", kind, str(path),
           "--workers", str(args.workers), "--rss-batch-size", str(args.rss_batch_size),
           "--rss-batches", str(args.rss_batches), "--prefetch", str(args.prefetch), "--seed", str(args.seed),
           "--max-length", str(args.max_length)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} memory run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child_pids() -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process().children()]


# -- main ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=600, help="image records for the throughput part")
    p.add_argument("--orig-size", default="1280x960", help="original image size WxH")
    p.add_argument("--image-max-side", type=int, default=384, help="re-encode at build time (Parsit build option)")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--patch-size", type=int, default=14)
    p.add_argument("--max-length", type=int, default=4096)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument("--batches", type=int, default=15, help="timed batches per repeat")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rss-rows", type=int, nargs="*", default=[10_000, 200_000])
    p.add_argument("--rss-batches", type=int, default=200)
    p.add_argument("--rss-batch-size", type=int, default=32)
    p.add_argument("--no-fastimg", action="store_true", help="skip the llava-fastimg attribution row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="keep data and builds here (reused on rerun)")
    p.add_argument("--rss-child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child[0], Path(args.rss_child[1]), args)))
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="parsit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    w, h = map(int, args.orig_size.lower().split("x"))
    need = (args.warmup + args.batches + args.prefetch * args.workers) * args.batch_size
    if need > args.rows:
        p.error(f"--rows must be at least (warmup + batches + prefetch * workers) * batch_size = {need}")

    print(f"# workdir {work}; {os.cpu_count()} CPUs; torch {torch.__version__}", flush=True)
    t0 = time.time()
    src, img_dir = make_image_records(work / "img-src", args.rows, (w, h), args.seed)
    t1 = time.time()
    build_dir = run_build(src, work / f"img-build-{args.rows}-{args.image_max_side}", img_dir, args,
                          args.image_max_side)
    t2 = time.time()
    print(f"# {args.rows} images {w}x{h} made in {t1 - t0:.1f}s; build (image_max_side={args.image_max_side}) "
          f"{t2 - t1:.1f}s", flush=True)

    loaders = {"parsit": parsit_loader(build_dir, args)[0], "llava": llava_loader(src, img_dir, args, fast=False)}
    if not args.no_fastimg:
        loaders["llava-fastimg"] = llava_loader(src, img_dir, args, fast=True)
    rates: dict[str, list[float]] = {k: [] for k in loaders}
    cpu: dict[str, list[float]] = {k: [] for k in loaders}
    for r in range(args.repeats):
        names = list(loaders) if r % 2 == 0 else list(reversed(loaders))  # alternate to cancel drift
        for name in names:
            lo = loaders[name]
            if hasattr(lo, "sampler") and hasattr(lo.sampler, "set_epoch"):
                lo.sampler.set_epoch(r)
            rate, ms = time_epoch(lo, args.batches, args.warmup, args.batch_size)
            rates[name].append(rate)
            cpu[name].append(ms)
            print(f"#   repeat {r} {name}: {rate:.1f} samples/s, {ms:.1f} CPU ms/sample", flush=True)
    base, base_cpu = statistics.median(rates["llava"]), statistics.median(cpu["llava"])
    print(f"\n## Throughput: {args.workers} workers, batch {args.batch_size}, prefetch {args.prefetch}, "
          f"{args.batches} timed batches x {args.repeats} repeats, images {w}x{h} -> {args.image_size}")
    print("| loader | samples/s (median) | runs | speed-up vs llava | CPU ms/sample (median) | CPU vs llava |")
    print("|---|---:|---|---:|---:|---:|")
    for name, vals in rates.items():
        med, mcpu = statistics.median(vals), statistics.median(cpu[name])
        print(f"| {name} | {med:.1f} | {', '.join(f'{v:.1f}' for v in vals)} | {med / base:.2f}x | {mcpu:.2f} | "
              f"{base_cpu / mcpu:.2f}x less |")
    del loaders

    if args.rss_rows:
        print(f"\n## Per-worker memory after {args.rss_batches} batches of {args.rss_batch_size} "
              f"({args.workers} workers, text-only rows; each measured in a fresh process)", flush=True)
        results: dict[int, dict[str, dict]] = {}
        for n in args.rss_rows:
            tb = time.time()
            src = make_text_records(work / f"txt-{n}", n)
            bdir = run_build(src, work / f"txt-build-{n}", None, args, None)
            tb = time.time() - tb
            results[n] = {"parsit": run_rss_child("parsit", bdir, args), "llava": run_rss_child("llava", src, args)}
            print(f"#   {n} rows: build {tb:.1f}s, {results[n]}", flush=True)
        print("| rows | parsit peak RSS / worker (MiB) | parsit peak anon | llava peak RSS / worker | llava peak anon |")
        print("|---:|---:|---:|---:|---:|")
        for n, m in results.items():
            print(f"| {n} | {m['parsit']['peak_rss']:.1f} | {m['parsit']['peak_anon']:.1f} | "
                  f"{m['llava']['peak_rss']:.1f} | {m['llava']['peak_anon']:.1f} |")
        lo_n, hi_n = min(results), max(results)
        for kind in ("parsit", "llava"):
            for key in ("peak_rss", "peak_anon"):
                ratio = results[hi_n][kind][key] / results[lo_n][kind][key]
                print(f"# {kind} {key}: {hi_n} rows / {lo_n} rows = {ratio:.3f} ({(ratio - 1) * 100:+.1f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
