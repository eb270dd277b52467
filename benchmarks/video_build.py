"""Video: sample frames once at build time, or decode every clip in ``__getitem__`` every epoch.

Generated clips (PyAV, H.264 in MP4, several sizes and lengths, each frame's index drawn in its pixels)
and one LLaVA-style record per clip (``"video"`` + ``<image>``), measured in one run:

- ``build``: ``parsit-data build`` of the records (local engine: one process and its decoder child) with a
  OneVision processor folder made here (SigLIP-384, so frames are stored at 384x384 and counted as
  OneVision does): end to end, and its records phase (engine start to the last partition: what grows with
  the data) in clips/s and frames decoded/s, the ``B`` of the last line. The build decodes each clip up to
  its last sampled frame (every frame, since uniform sampling ends on the last one). ``decoder stage``: the same
  per-clip work (``decode_video`` with the build's options) in this process, per CPU-second of all its
  threads: the rate per core, without the build's fixed start-up.
- ``parsit loader``: the trainer's dataloader over the built shards: per sample, decode the stored JPEG
  frames and make ``pixel_values_videos`` (parsit_train's video path).
- ``per-epoch decoding``: what LLaVA-NeXT's ``LazySupervisedDataset.__getitem__`` does for a video every
  epoch: open the clip (decord's ``VideoReader(num_threads=1)`` as ``process_video_with_decord``, or
  PyAV's ``container.decode``), sample the same frames (``linspace(0, total - 1, N)``), and run the
  image processor over them (``SiglipImageProcessorPil.preprocess``: resize to 384, rescale, normalise).
  ``decode only`` rows leave out the processor, to show where the time goes. The last line compares
  the loader with the faster of the two full baselines.

Every loader runs in the same ``DataLoader`` settings (workers, batch size, prefetch); each number is
the median of ``--repeats`` runs. Defaults take 1 to 3 minutes on 2 shared cores, depending on their load::

    python benchmarks/video_build.py [--frames 32] [--repeats 3] [--workers 1]

The last line is ``video: build B clips/s, loader L samples/s vs per-epoch decoding D samples/s (Rx)``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "data"))  # the clip generator and the OneVision processor folder

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

#: (width, height) x frames: small to 854x480, 2 s to 12 s at 25 fps.
SIZES = [(320, 240), (640, 360), (854, 480)]
LENGTHS = [48, 150, 300]
QUESTION = "<image>\nDescribe what happens in the video."


# -- data -------------------------------------------------------------------------------------------

def make_clips(folder: Path, repeat: int) -> tuple[Path, Path, int]:
    """Clips of every size and length (``repeat`` copies each) and a JSONL of one record per clip;
    returns (records, clip folder, total frames)."""
    from video_support import make_clip

    clips = folder / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    records, total = [], 0
    for r in range(repeat):
        for w, h in SIZES:
            for n in LENGTHS:
                name = f"clip-{w}x{h}-{n}-{r}.mp4"
                if not (clips / name).exists():
                    make_clip(clips / name, n, size=(w, h), fps=25)
                total += n
                records.append({"id": name, "video": name, "conversations": [
                    {"from": "human", "value": QUESTION},
                    {"from": "gpt", "value": f"A {w}x{h} test pattern counting {n} frames in binary."}]})
    src = folder / "videos.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    return src, clips, total


def make_processor(folder: Path) -> Path:
    """A OneVision processor folder (SigLIP-384/14), written as the hub's llava-hf folders are."""
    from vision_support import OV_SIGLIP, llava_onevision_processor, save_processor

    if not (folder / "processor_config.json").exists():
        save_processor(llava_onevision_processor(**OV_SIGLIP), folder)
    return folder


# -- Parsit: build once, load from shards ---------------------------------------------------------------

def run_build(src: Path, clips: Path, processor: Path, out: Path, frames: int) -> tuple[float, float]:
    """(whole build, its records phase) in seconds. The records phase runs from the engine's start to the
    last partition's result: reading, decoding (the decoder child's start included), tokenising and writing
    the records, without the build's fixed start-up (tokenizer, processor folder) and end (manifest,
    report), which a large dataset amortises."""
    from parsit_data.build import build
    from parsit_data.config import BuildConfig

    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    build(BuildConfig(inputs=[str(src)], out=str(out), processor=str(processor), video_root=str(clips),
                      video_frames=frames, engine="local", overwrite=True),
          on_start=lambda *_: marks.setdefault("start", time.perf_counter()),
          on_progress=lambda _: marks.__setitem__("end", time.perf_counter()))
    return time.perf_counter() - t0, marks["end"] - marks["start"]


def decoder_rate(src: Path, clips: Path, processor: Path, frames: int) -> tuple[float, float]:
    """(frames decoded, clips) per CPU-second of the build's own per-clip work (``decode_video`` with the
    build's options: count, decode to the last sampled frame, resize and JPEG the sampled ones), run in this
    process so that ``process_time`` holds every decoder thread's CPU time: a rate per core."""
    from parsit_data.config import BuildConfig
    from parsit_data.video import decode_video
    from parsit_data.video_build import video_options

    cfg = BuildConfig(inputs=[str(src)], out=str(src.parent / "unused"), processor=str(processor),
                      video_root=str(clips), video_frames=frames)
    opts = video_options(cfg, cfg.video_spec)
    names = [json.loads(line)["video"] for line in src.read_text().splitlines()]
    c0, decoded = time.process_time(), 0
    for name in names:
        v = decode_video(str(clips / name), name, opts)
        decoded += v.frames[-1].index + 1  # decoded in order up to the last sampled frame
    cpu = time.process_time() - c0
    return decoded / cpu, len(names) / cpu


def parsit_loader_rate(build_dir: Path, processor: Path, args) -> float:
    """Video samples/s of the trainer's loader over the shards, one epoch, first batch not timed
    (parsit_train.data.video_throughput: build_dataloader, JPEG frames decoded in the workers, the
    collator's -201 expansion and float ``pixel_values_videos`` normalised with the manifest's mean/std)."""
    from parsit_train.data.video_throughput import loader_video_throughput

    r = loader_video_throughput(build_dir, processor, batch_size=args.batch_size, num_workers=args.workers,
                                warmup_batches=1)
    return r["video_samples_per_s"]


# -- the LLaVA-style baseline ------------------------------------------------------------------------

def uniform_indices(total: int, frames: int) -> list[int]:
    """LLaVA-NeXT's ``frames_upbound`` + ``force_sample``: ``np.linspace(0, total - 1, N, dtype=int)``."""
    return np.linspace(0, total - 1, frames, dtype=int).tolist()


def decode_decord(path: str, frames: int) -> np.ndarray:
    """``process_video_with_decord``: VideoReader(num_threads=1), uniform indices, get_batch."""
    from decord import VideoReader, cpu

    vr = VideoReader(path, ctx=cpu(0), num_threads=1)
    video = vr.get_batch(uniform_indices(len(vr), frames)).asnumpy()
    vr.seek(0)
    return video


def decode_pyav(path: str, frames: int) -> np.ndarray:
    """``process_video_with_pyav``: decode in order, keep the sampled frames, stop after the last one."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        wanted = uniform_indices(stream.frames, frames)
        keep, out = set(wanted), []
        for i, frame in enumerate(container.decode(stream)):
            if i in keep:
                out.append(frame.to_ndarray(format="rgb24"))
            if i >= wanted[-1]:
                break
    return np.stack(out)


DECODERS = {"decord": decode_decord, "pyav": decode_pyav}


class PerEpochVideoDataset(Dataset):
    """LLaVA-NeXT's ``LazySupervisedDataset`` reduced to what it does per video item (the text part is
    tokenised too, as there, so both sides produce a trainable sample)."""

    def __init__(self, records: Path, clips: Path, decoder: str, frames: int, preprocess: bool):
        from transformers import AutoTokenizer
        # transformers 5's SiglipImageProcessor is the torchvision one, which this venv cannot load (it falls
        # back to this class itself, with a warning): the PIL processor, as LLaVA runs without torchvision.
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

        from parsit_data.format import bundled_qwen3_tokenizer

        self.items = [json.loads(line) for line in records.read_text().splitlines()]
        self.clips, self.decode, self.frames = clips, DECODERS[decoder], frames
        self.processor = SiglipImageProcessorPil(size={"height": 384, "width": 384}) if preprocess else None
        self.tokenizer = AutoTokenizer.from_pretrained(str(bundled_qwen3_tokenizer()))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        rec = self.items[i]
        video = self.decode(str(self.clips / rec["video"]), self.frames)  # [F, H, W, 3] uint8
        if self.processor is not None:
            pixels = self.processor.preprocess(list(video), return_tensors="pt")["pixel_values"]
        else:
            pixels = torch.from_numpy(video)
        text = "".join(t["value"] for t in rec["conversations"])
        return {"input_ids": torch.tensor(self.tokenizer(text).input_ids), "pixel_values_videos": pixels}


def baseline_loader(records: Path, clips: Path, decoder: str, preprocess: bool, args) -> DataLoader:
    ds = PerEpochVideoDataset(records, clips, decoder, args.frames, preprocess)
    return DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                      prefetch_factor=args.prefetch if args.workers else None, collate_fn=list)


def _samples(batch) -> int:
    return len(batch["input_ids"]) if isinstance(batch, dict) else len(batch)


def time_epoch(loader) -> float:
    """Samples per second over one epoch, timed from the first batch (worker start-up and the first
    prefetch left out: what a long epoch runs at)."""
    it = iter(loader)
    next(it)
    t0, n = time.perf_counter(), 0
    for batch in it:
        n += _samples(batch)
    return n / (time.perf_counter() - t0)


# -- main ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=32, help="frames sampled per clip (--video-frames)")
    p.add_argument("--clip-repeat", type=int, default=1, help="copies of each of the 9 size x length clips")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (both sides)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None, help="keep clips here (reused on rerun)")
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="parsit-video-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    src, clips, total_frames = make_clips(work / "data", args.clip_repeat)
    processor = make_processor(work / "onevision")
    n_clips = len(src.read_text().splitlines())
    print(f"# workdir {work}; {os.cpu_count()} CPUs; {n_clips} clips ({', '.join(f'{w}x{h}' for w, h in SIZES)} x "
          f"{', '.join(map(str, LENGTHS))} frames at 25 fps, H.264), {total_frames} frames; made in "
          f"{time.perf_counter() - t0:.1f}s; {args.frames} frames sampled per clip", flush=True)

    build_s, records_s = [], []
    for r in range(args.repeats):
        whole, phase = run_build(src, clips, processor, work / "build", args.frames)
        build_s.append(whole)
        records_s.append(phase)
        print(f"#   build {r}: {whole:.2f}s, records phase {phase:.2f}s", flush=True)
    build_dir = work / "build"
    dec_frames, dec_clips = decoder_rate(src, clips, processor, args.frames)
    print(f"#   decoder stage: {dec_frames:,.0f} frames/CPU-s, {dec_clips:.2f} clips/CPU-s", flush=True)

    kinds = {}
    for dec in DECODERS:
        try:
            __import__(dec if dec != "pyav" else "av")
        except ImportError:
            print(f"# {dec} is not installed: its rows are left out", flush=True)
            continue
        kinds[f"per-epoch {dec} + processor"] = (dec, True)
        kinds[f"per-epoch {dec}, decode only"] = (dec, False)
    rates: dict[str, list[float]] = {"parsit loader": [], **{k: [] for k in kinds}}
    for r in range(args.repeats):
        for name in (list(rates) if r % 2 == 0 else list(reversed(rates))):  # alternate to cancel drift
            if name == "parsit loader":  # the tokenizer is the processor folder's, as the build used
                rates[name].append(parsit_loader_rate(build_dir, processor, args))
            else:
                rates[name].append(time_epoch(baseline_loader(src, clips, *kinds[name], args)))
            print(f"#   repeat {r} {name}: {rates[name][-1]:.2f} samples/s", flush=True)

    b, phase = statistics.median(build_s), statistics.median(records_s)
    clips_s, frames_s = n_clips / phase, total_frames / phase
    loader_rate = statistics.median(rates["parsit loader"])
    full = {k: statistics.median(v) for k, v in rates.items() if k.endswith("+ processor")}
    base_name = max(full, key=full.get)
    base = full[base_name]
    print(f"\n## {n_clips} clips, {args.frames} frames each; DataLoader: {args.workers} worker(s), batch "
          f"{args.batch_size}; medians of {args.repeats}")
    print("| what | rate (median) | runs | vs best per-epoch baseline |")
    print("|---|---:|---|---:|")
    print(f"| build, end to end (start-up, records, manifest, report) | {n_clips / b:.2f} clips/s | "
          f"{', '.join(f'{s:.2f}s' for s in build_s)} | once per dataset |")
    print(f"| build, records phase (local engine: one process + its decoder child) | {clips_s:.2f} clips/s, "
          f"{frames_s:,.0f} frames decoded/s | {', '.join(f'{s:.2f}s' for s in records_s)} | once per dataset |")
    print(f"| build's decoder stage, per core (CPU time) | {dec_clips:.2f} clips/s, {dec_frames:,.0f} frames "
          f"decoded/s | 1 | once per dataset |")
    for name, vals in rates.items():
        med = statistics.median(vals)
        print(f"| {name} | {med:.2f} samples/s | {', '.join(f'{v:.2f}' for v in vals)} | {med / base:.2f}x |")
    print(f"# baseline for the ratio: {base_name}. Build B = the records phase (what grows with the data, plus the "
          "start of the decoder child; the build's fixed start-up and its report are in the end-to-end row); the "
          "decoder stage is the per-clip work alone. "
          "Loader and baselines: one epoch each, first batch (worker start-up) not timed.")
    print(f"video: build {clips_s:.2f} clips/s, loader {loader_rate:.2f} samples/s vs per-epoch decoding "
          f"{base:.2f} samples/s ({loader_rate / base:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
