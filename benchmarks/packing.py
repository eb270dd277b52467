"""Packing: token utilisation of padding, length grouping and packing on a LLaVA-like length mix, the plan's
cost, and training throughput of the tiny CPU model packed vs padded on a real build.

Part 1, generated lengths (200k samples, seed 0), the shape of LLaVA-1.5's 665k SFT mix at 336 px
(576 visual tokens per image):

* 45% short VQA, one image: 576 + 30..250 text tokens;
* 30% captions, one image: 576 + 15..70;
* 15% text-only conversations, long: log-normal around 900 tokens, 60..4000;
* 10% multi-image, 2..5 images: 576 each + 80..500 text.

Utilisation = real tokens / positions computed. Padded: consecutive micro-batches of the shuffled order,
each padded to its longest sample; grouped: the same after LLaVA's modality + length grouping (the
sampler's ``group_by_length``); both with a micro-batch of ``round(pack_length / mean length)`` samples,
so a micro-batch holds about as many tokens as a pack. Packed: the plan's tokens / (packs x pack_length),
i.e. every pack counted as a full ``pack_length`` row (what a fixed-shape kernel computes; a varlen kernel
computes only the real tokens). Plan time: :func:`plan_packs` over the 200k-sample epoch order, one core.

Part 3, a LLaVA-OneVision-like mix (``onevision_mix``: photos and documents of real sizes, multi-image
samples), each image's visual tokens from the build's exact count (``VisionGeometry`` read from a
OneVision processor folder) and checked against transformers' processor ``__call__`` for every
(size, single/multi-image) case of the mix; token utilisation packed vs padded at 16,384. Its summary is
the last line.

Part 2, a real build (the builder, Qwen3 tokenizer, pillow images; 28 px / patch 14, so 4 visual tokens
an image) of a similar mix scaled down, trained with the tiny model of the tests on CPU in fp32, one
process, through the trainer's ``forward_loss``: the same number of optimizer steps padded (micro-batch
of B samples) and packed (one pack of ``pack_length`` tokens, ~ the same tokens), supervised tokens/s.
No GPU was used: GPU throughput is not measured here.

    python benchmarks/packing.py [--samples 200000] [--steps 12] [--onevision-samples 50000] [--no-train]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
for _k, _v in {"HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

from parsit_train.data.packing import packed_utilisation, padded_utilisation, plan_packs  # noqa: E402
from parsit_train.data.sampler import ResumableBatchSampler  # noqa: E402


def llava_mix(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, image counts) of the generated mix (see the module docstring)."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, size=n, p=[0.45, 0.30, 0.15, 0.10])
    lengths = np.empty(n, dtype=np.int64)
    images = np.zeros(n, dtype=np.int64)
    vqa, cap, txt, multi = (kind == k for k in range(4))
    lengths[vqa] = 576 + rng.integers(30, 251, vqa.sum())
    lengths[cap] = 576 + rng.integers(15, 71, cap.sum())
    lengths[txt] = np.clip(rng.lognormal(np.log(900), 0.8, txt.sum()), 60, 4000).astype(np.int64)
    k = rng.integers(2, 6, multi.sum())
    lengths[multi] = 576 * k + rng.integers(80, 501, multi.sum())
    images[vqa | cap] = 1
    images[multi] = k
    return lengths, images


def utilisation_table(n: int) -> tuple[dict, float]:
    lengths, images = llava_mix(n)
    rows, plan_s = {}, 0.0
    for pack in (4096, 8192):
        batch = max(1, round(pack / lengths.mean()))
        kw = dict(seed=0, lengths=lengths, has_image=images > 0)
        order = ResumableBatchSampler([n], batch, **kw).epoch_order(0)
        grouped = ResumableBatchSampler([n], batch, group_by_length=True, **kw).epoch_order(0)
        t = time.perf_counter()
        plan = plan_packs(order, lengths, images, pack, rng=np.random.default_rng(0))
        dt = time.perf_counter() - t
        capped = plan_packs(order, lengths, images, pack, max_images=8, rng=np.random.default_rng(0))
        assert sorted(plan.members.tolist()) == sorted(order.tolist())  # nothing dropped
        rows[pack] = {
            "batch": batch,
            "padded": padded_utilisation(lengths[order], batch),
            "grouped": padded_utilisation(lengths[grouped], batch),
            "packed": packed_utilisation(plan, pack),
            "packed_cap8": packed_utilisation(capped, pack),
            "packs": len(plan),
            "plan_s": dt,
        }
        plan_s = max(plan_s, dt * 200_000 / n)
    return rows, plan_s


def window_table(n: int) -> list[tuple[int, float, float]]:
    """Utilisation and plan time at 4096 against the planner's window (the docs' choice of default)."""
    lengths, images = llava_mix(n)
    order = np.random.default_rng(1).permutation(n)
    out = []
    for window in (512, 2048, 16384, n):
        t = time.perf_counter()
        plan = plan_packs(order, lengths, images, 4096, window=window, rng=np.random.default_rng(0))
        out.append((window, packed_utilisation(plan, 4096), time.perf_counter() - t))
    return out


# --- part 3: a LLaVA-OneVision-like mix, from exact per-image counts ------------------------------------
#: (width, height) of real photos: phone (4:3 both ways), HD/FHD frames, COCO-like web photos, square posts.
PHOTO_SIZES = [(4032, 3024), (3024, 4032), (1920, 1080), (1080, 1920), (1280, 720), (1024, 768), (800, 600),
               (640, 480), (640, 427), (500, 375), (612, 612), (1080, 1350), (375, 500), (2048, 1536)]
#: Documents: A4 at 300 and 150 dpi, US letter at 200 dpi, a receipt, slides, phone and desktop screenshots,
#: charts.
DOC_SIZES = [(2480, 3508), (1240, 1754), (1700, 2200), (600, 1800), (1280, 720), (1170, 2532), (2560, 1440),
             (800, 500), (1000, 800), (1654, 2339)]


def onevision_mix(n: int, geometry, seed: int = 0) -> tuple[np.ndarray, np.ndarray, set]:
    """(lengths, image counts, image sizes used) of a OneVision-like SFT mix, with each image's exact count:

    * 50% one photo + VQA (20..250 text tokens); * 25% one document + QA / OCR (60..900 text tokens);
    * 15% multi-image, 2..4 photos (each its base crop + 1 newline) + 80..500 text; * 10% text-only
      (log-normal around 900 tokens, 60..4000).
    """
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, size=n, p=[0.50, 0.25, 0.15, 0.10])
    lengths = np.empty(n, dtype=np.int64)
    images = np.zeros(n, dtype=np.int64)
    used: set = set()
    for i, k in enumerate(kind):
        if k == 3:
            lengths[i] = int(np.clip(rng.lognormal(np.log(900), 0.8), 60, 4000))
            continue
        if k == 2:
            m = int(rng.integers(2, 5))
            sizes = [PHOTO_SIZES[j] for j in rng.integers(0, len(PHOTO_SIZES), m)]
            text = int(rng.integers(80, 501))
        else:
            pool = PHOTO_SIZES if k == 0 else DOC_SIZES
            sizes = [pool[int(rng.integers(0, len(pool)))]]
            text = int(rng.integers(20, 251)) if k == 0 else int(rng.integers(60, 901))
        used.update((w, h, len(sizes) > 1) for w, h in sizes)
        lengths[i] = text + sum(geometry.tokens_for(w, h, len(sizes)) for w, h in sizes)
        images[i] = len(sizes)
    return lengths, images, used


def onevision_counts_checked(geometry, proc, used: set) -> tuple[int, int]:
    """How many of the mix's (size, single/multi) cases transformers' LlavaOnevisionProcessor ``__call__``
    counts the same as the geometry (a processor written with save_pretrained pieces, read back by
    ``VisionGeometry.from_processor_dir``; see tests/data/vision_support.py for the no-torchvision route)."""
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "data"))
    from vision_support import run_samples

    same = 0
    for w, h, multi in sorted(used):
        k = 2 if multi else 1
        tokens, _ = run_samples(proc, None, "llava_onevision", [[Image.new("RGB", (w, h))] * k])
        same += tokens[0] == k * geometry.tokens_for(w, h, k)
    return same, len(used)


def onevision_table(n: int, pack: int = 16384) -> dict:
    from parsit_data.format.vision import VisionGeometry

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "data"))
    from vision_support import OV_SIGLIP, llava_onevision_processor, save_processor

    folder = Path(tempfile.mkdtemp(prefix="parsit-ov-"))
    proc = llava_onevision_processor(**OV_SIGLIP)
    geometry = VisionGeometry.from_processor_dir(save_processor(proc, folder / "processor"))
    lengths, images, used = onevision_mix(n, geometry)
    same, total = onevision_counts_checked(geometry, proc, used)
    batch = max(1, round(pack / lengths.mean()))
    order = ResumableBatchSampler([n], batch, seed=0, lengths=lengths, has_image=images > 0).epoch_order(0)
    plan = plan_packs(order, lengths, images, pack, rng=np.random.default_rng(0))
    return {"padded": padded_utilisation(lengths[order], batch), "packed": packed_utilisation(plan, pack),
            "batch": batch, "packs": len(plan), "mean": float(lengths.mean()), "max": int(lengths.max()),
            "same": same, "total": total, "pack": pack, "image_tokens": float(lengths[images > 0].mean())}


# --- part 2: training throughput on a real build -------------------------------------------------------
def _records(folder: Path, n: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    recs = []
    for i in range(n):
        kind = rng.choice(4, p=[0.45, 0.30, 0.15, 0.10])
        say = lambda k: " ".join(words[(i + j) % len(words)] for j in range(k))  # noqa: E731
        if kind == 2:
            recs.append({"id": f"t{i}", "conversations": [{"from": "human", "value": "Tell me more. " + say(20)},
                                                          {"from": "gpt", "value": say(int(rng.integers(60, 300)))}]})
            continue
        k = int(rng.integers(2, 4)) if kind == 3 else 1
        names = []
        for j in range(k):
            name = f"{i}_{j}.png"
            Image.new("RGB", (30 + j, 28), (i % 256, 40 * j % 256, 120)).save(folder / "img" / name)
            names.append(name)
        answer = say(int(rng.integers(3, 12))) if kind == 1 else say(int(rng.integers(10, 60)))
        recs.append({"id": f"i{i}", "image": names if k > 1 else names[0], "conversations": [
            {"from": "human", "value": "<image>\n" * k + "What is shown?"}, {"from": "gpt", "value": answer}]})
    src = folder / "records.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return src


def train_throughput(steps: int, samples: int) -> dict:
    import torch

    from parsit_data.build import build
    from parsit_data.config import BuildConfig
    from parsit_data.format import bundled_qwen3_tokenizer
    from parsit_train.config import parse_config
    from parsit_train.config import DataConfig, DataLoaderConfig
    from parsit_train.data import BatchSpec, build_dataloader, open_view
    from parsit_train.model import build_model
    from parsit_train.train import forward_loss

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "train"))
    from train_helpers import TINY_LM, tiny_config

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="parsit-pack-"))
    src = _records(tmp, samples)
    out = tmp / "build"
    build(BuildConfig(inputs=[str(src)], out=str(out), tokenizer=str(bundled_qwen3_tokenizer()),
                      image_root=str(tmp / "img"), image_size=28, patch_size=14, max_length=512))
    cfg = parse_config(tiny_config(out, tmp / "o"), tmp)
    cfg.model.language_model.config = {**TINY_LM, "max_position_embeddings": 1024}
    results = {}
    batch, pack = 4, 512
    for mode in ("padded", "packed"):
        torch.manual_seed(0)
        model = build_model(cfg.model).float()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loader = build_dataloader(open_view([out], "qwen3", max_length=512),
                                  DataConfig(builds=[str(out)], pack_length=pack if mode == "packed" else None),
                                  DataLoaderConfig(num_workers=0),
                                  BatchSpec(batch_size=batch if mode == "padded" else 1, image_token_id=151655,
                                            blank_image=True))
        batches, it = [], iter(loader)
        while len(batches) < steps + 2:
            try:
                batches.append(next(it))
            except StopIteration:
                it = iter(loader)
        sup = tok = padded = 0
        elapsed = 0.0
        for k, b in enumerate(batches):
            t = time.perf_counter()
            loss = forward_loss(model, b, "cpu", torch.float32) / max(1, b.num_supervised)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if k >= 2:  # two warm-up steps
                elapsed += time.perf_counter() - t
                sup, tok, padded = sup + b.num_supervised, tok + b.num_tokens, padded + b.num_padded
        results[mode] = {"sup_per_s": sup / elapsed, "util": tok / padded, "sup": sup, "s": elapsed}
    results["batch"], results["pack"], results["rows"] = batch, pack, samples
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--build-rows", type=int, default=96)
    ap.add_argument("--onevision-samples", type=int, default=50_000)
    ap.add_argument("--no-train", action="store_true", help="skip part 2 (the CPU training run)")
    args = ap.parse_args()

    rows, plan_s = utilisation_table(args.samples)
    print(f"token utilisation on the generated LLaVA-like mix ({args.samples} samples)")
    print(f"{'pack_length':>11} {'micro-batch':>11} {'padded':>7} {'grouped':>8} {'packed':>7} {'packed,cap8':>11} "
          f"{'packs':>7} {'plan s':>7}")
    for pack, r in rows.items():
        print(f"{pack:>11} {r['batch']:>11} {r['padded']:>7.3f} {r['grouped']:>8.3f} {r['packed']:>7.3f} "
              f"{r['packed_cap8']:>11.3f} {r['packs']:>7} {r['plan_s']:>7.2f}")
    print("\nplanner window at 4096 (utilisation, plan s)")
    for window, util, dt in window_table(args.samples):
        print(f"  window {window:>7}: {util:.4f}  {dt:.2f} s")

    if not args.no_train:
        tr = train_throughput(args.steps, args.build_rows)
        print(f"\ntiny model, CPU fp32, 1 process, {args.steps} optimizer steps each, real build of {tr['rows']} rows")
        print(f"{'mode':>8} {'sup tok/s':>10} {'util':>6} {'sup tokens':>10} {'seconds':>8}")
        for mode in ("padded", "packed"):
            r = tr[mode]
            print(f"{mode:>8} {r['sup_per_s']:>10.1f} {r['util']:>6.3f} {r['sup']:>10} {r['s']:>8.2f}")
        print(f"packed / padded supervised tokens/s: {tr['packed']['sup_per_s'] / tr['padded']['sup_per_s']:.2f}x "
              f"(padded: micro-batch {tr['batch']} samples; packed: 1 pack of {tr['pack']} tokens). "
              "GPU throughput: not measured (no GPU).")
    r = rows[8192]
    print(f"packing: utilisation {r['packed']:.3f} at 8192 (padded {r['padded']:.3f}, grouped {r['grouped']:.3f}), "
          f"plan {plan_s:.2f} s per 200k samples")

    ov = onevision_table(args.onevision_samples)
    print(f"\nOneVision-like mix ({args.onevision_samples} samples; SigLIP-384, anyres_max_9, 6x6 pinpoints; "
          f"photo and document sizes): mean length {ov['mean']:.0f}, longest {ov['max']}, "
          f"mean length of image samples {ov['image_tokens']:.0f}")
    print(f"  padded (micro-batch {ov['batch']}): {ov['padded']:.3f}   packed at {ov['pack']} ({ov['packs']} packs): "
          f"{ov['packed']:.3f}")
    print(f"families: OneVision utilisation {ov['packed']:.3f} packed at {ov['pack']} (padded {ov['padded']:.3f}), "
          f"counts exact for {ov['same']}/{ov['total']} image sizes")


if __name__ == "__main__":
    main()
