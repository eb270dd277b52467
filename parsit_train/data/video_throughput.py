"""The loader's video samples per second from shards: what issue 20's benchmark compares with decoding clips
in ``__getitem__`` every epoch (benchmarks/video_build.py calls :func:`loader_video_throughput`).

It runs the trainer's own data path (:func:`parsit_train.data.build_dataloader`: mapped shards, the
dataset's frame decoding in the workers, the collator's -201 expansion and ``pixel_values_videos``) over a
build for one epoch or a time budget, and counts the samples whose video reached a batch (no blank video:
the run's model is not involved). Usage::

    from parsit_train.data.video_throughput import loader_video_throughput
    r = loader_video_throughput("out/build", "qwen3", batch_size=4, num_workers=2, seconds=20)
    r["video_samples_per_s"]

or ``python -m parsit_train.data.video_throughput BUILD [--tokenizer qwen3] [--workers 2] [--batch 4]``
(prints the dict as JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

VIDEO_PAD = 151656  # Qwen3 <|video_pad|>: any id the collator can expand to; no model reads it here


def loader_video_throughput(build_dir: str | Path, tokenizer: str | Path = "qwen3", *, batch_size: int = 4,
                            num_workers: int = 2, seconds: float | None = None, max_batches: int | None = None,
                            image_token_id: int = 151655, video_token_id: int = VIDEO_PAD, seed: int = 0,
                            warmup_batches: int = 1) -> dict:
    """Iterate the loader over ``build_dir`` (one epoch, or until ``seconds`` / ``max_batches``) and time it.

    Returns ``{"samples", "video_samples", "frames", "batches", "seconds", "samples_per_s",
    "video_samples_per_s", "frames_per_s", "num_workers", "batch_size"}``; the first ``warmup_batches``
    (worker start-up) are not timed."""
    from parsit_train.config import DataConfig, DataLoaderConfig
    from parsit_train.data import BatchSpec, build_dataloader, open_view

    view = open_view([build_dir], tokenizer, verify_checksums=False)
    loader = build_dataloader(view, DataConfig(builds=[str(build_dir)]),
                              DataLoaderConfig(num_workers=num_workers, persistent_workers=False, pin_memory=False),
                              BatchSpec(batch_size=batch_size, image_token_id=image_token_id, seed=seed,
                                        drop_last=False, video_token_id=video_token_id))
    samples = videos = frames = batches = 0
    start = None
    for batch in loader:
        batches += 1
        if batches == warmup_batches + 1 or (start is None and warmup_batches == 0):
            start = time.perf_counter()
        if batches > warmup_batches:
            vids = batch.pixel_values_videos or ()
            samples += len(batch.sample_ids)
            videos += len(vids)
            frames += sum(int(v.shape[0]) for v in vids)
        if max_batches is not None and batches - warmup_batches >= max_batches:
            break
        if seconds is not None and start is not None and time.perf_counter() - start >= seconds:
            break
    elapsed = max(time.perf_counter() - start, 1e-9) if start is not None else 0.0
    rate = (lambda n: n / elapsed if elapsed else 0.0)
    return {"samples": samples, "video_samples": videos, "frames": frames, "batches": batches - warmup_batches,
            "seconds": elapsed, "samples_per_s": rate(samples), "video_samples_per_s": rate(videos),
            "frames_per_s": rate(frames), "num_workers": num_workers, "batch_size": batch_size}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build")
    ap.add_argument("--tokenizer", default="qwen3")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--max-batches", type=int, default=None)
    a = ap.parse_args(argv)
    print(json.dumps(loader_video_throughput(a.build, a.tokenizer, batch_size=a.batch, num_workers=a.workers,
                                             seconds=a.seconds, max_batches=a.max_batches), indent=2))


if __name__ == "__main__":
    main()
