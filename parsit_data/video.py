"""Videos: frames sampled once, at build time, under a hard time and memory bound.

Training stacks decode clips inside ``Dataset.__getitem__`` on every epoch; a decoder that crashes or
hangs kills the run, and a sample's length is only known after decoding. Here a clip is decoded once,
its frames are sampled by a deterministic rule, re-encoded as small JPEGs, and what comes out is what
the shard stores: training never opens a video file.

The rule (LLaVA-NeXT's ``process_video_with_decord`` with ``frames_upbound`` and ``force_sample``):

- ``frames=N`` alone: N frames uniform over the whole clip, ``linspace(0, total - 1, N)`` as integers;
- ``fps=F`` too: every ``round(avg_fps / F)``-th frame, and the uniform N when that gives more than N;
- a clip with no more frames than asked keeps every frame (no frame is repeated).

Frame ``i`` is the ``i``-th frame in presentation order; its timestamp is its own presentation time
(variable frame rate is read as it is, never assumed constant).

Hostile clips are ordinary input. The path is resolved with the image rules (inside the root, no
symlink out, regular files only). Decoding runs in a child process (:class:`VideoDecoder`): a decoder
that hangs is killed after ``timeout_s`` (``video_timeout``), one that crashes is a rejected record
(``video_unreadable``), and its address space is capped, so a hostile clip can cost one record, never
the build. Nothing holds a decoded clip: frames are decoded one at a time and only the sampled ones are
kept, as JPEG.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import io
import math
import multiprocessing
import os
import resource
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parsit_data.images import _open_fd, resolve_image_path
from parsit_data.reasons import VIDEO_REASONS  # noqa: F401  (the codes this module raises, re-exported)
from parsit_data.records import Reject

#: Container formats that hold one still picture, not a video: an image named ``clip.mp4``.
_STILL_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif", "gif_pipe",
                  "pgm_pipe", "ppm_pipe", "svg_pipe", "jpegls_pipe", "qoi_pipe"}

#: What PyAV raises for bad video data (its FFmpegError subclasses), plus what a file object raises.
_AV_ERRORS_FALLBACK = (OSError, ValueError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError,
                       OverflowError, UnicodeDecodeError)


@dataclass(frozen=True)
class VideoOptions:
    root: Path | None = None
    frames: int = 32  # --video-frames: uniform frames, or the cap with --video-fps
    fps: float | None = None  # --video-fps
    #: (height, width): each sampled frame squashed to exactly this (the video processor's input size, PIL
    #: bicubic); None: kept at its own size, or at ``max_side`` when that is set
    size: tuple[int, int] | None = None
    max_side: int | None = None  # --video-max-side: the longer side at most this, aspect kept (overrides size)
    jpeg_quality: int = 95
    resample: str = "bicubic"  # the PIL filter of the resize (the video processor's ``resample``)
    max_duration_s: float = 3600.0  # a longer clip is video_too_long (checked before any decode)
    max_pixels: int = 4096 * 2304  # per frame: an 8K clip is video_too_large
    max_file_bytes: int = 8 << 30
    timeout_s: float = 120.0  # wall time for one clip's decode, the child is killed after it
    memory_limit_bytes: int = 2 << 30  # the decoder child's working memory (address space beyond its libraries)

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"--video-frames must be >= 1, got {self.frames}")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"--video-fps must be a positive number, got {self.fps}")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"--video-max-side must be >= 1, got {self.max_side}")


@dataclass(frozen=True)
class SampledFrame:
    index: int  # in presentation order, 0-based
    time_s: float  # presentation time from the stream's start
    data: bytes  # JPEG
    width: int  # as stored
    height: int


@dataclass(frozen=True)
class LoadedVideo:
    rel_path: str
    frames: tuple[SampledFrame, ...]
    total_frames: int
    duration_s: float
    avg_fps: float
    width: int  # the clip's own size
    height: int
    codec: str
    container: str


def sample_indices(total: int, avg_fps: float, frames: int, fps: float | None = None) -> list[int]:
    """The frames a clip of ``total`` frames gives; see the module docstring for the rule."""
    if total <= 0:
        return []
    if fps is not None and avg_fps > 0:
        step = max(1, round(avg_fps / fps))
        picked = list(range(0, total, step))
        if len(picked) <= frames:
            return picked
    if total <= frames:
        return list(range(total))
    # exactly LLaVA-NeXT's expression (numpy's float steps, truncated), so a run can be matched id for id
    return np.linspace(0, total - 1, frames, dtype=int).tolist()


def onevision_video_tokens(num_frames: int, num_image_tokens: int) -> int:
    """``LlavaOnevisionProcessor``'s count: each frame pooled 2x2 (ceil), one newline for the clip.

    SigLIP-384 (729 tokens per crop): ``frames * 14 * 14 + 1``.
    """
    side = math.ceil(int(math.sqrt(num_image_tokens)) / 2)
    return num_frames * side * side + 1


def resolve_video_path(rel: str, root: Path | None) -> Path:
    """The image rules, with the video reason codes."""
    try:
        return resolve_image_path(rel, root)
    except Reject as rej:
        r = rej.rejection
        code = {"image_missing": "video_missing", "image_outside_root": "video_outside_root"}.get(
            r.reason.value, "video_unreadable")
        raise Reject(code, r.detail.replace("image", "video", 1)) from None


class VideoDecoder:
    """Decodes clips in one child process, restarted after a timeout or a crash.

    The child is started with ``forkserver`` (never ``fork``: the parent may be a Ray worker with
    threads) and capped with ``RLIMIT_AS``. One decoder per build worker; :meth:`close` when done.
    """

    def __init__(self, opts: VideoOptions):
        self.opts = opts
        self._pool: cf.ProcessPoolExecutor | None = None
        self.restarts = 0

    def _executor(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("forkserver")
            self._pool = cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=_limit_memory,
                                                initargs=(self.opts.memory_limit_bytes,))
            # Started (PyAV imported) before any clip's clock runs: the limit is for decoding one clip,
            # not for starting the child, which takes a second or more on a loaded machine. The child is
            # started (in submit) without the parent's __main__, see _without_main.
            with _without_main():
                ready = self._pool.submit(_ready)
            ready.result(timeout=_START_TIMEOUT_S)
        return self._pool

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list(getattr(pool, "_processes", {}).values()):  # no public API kills a stuck worker
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        self.restarts += 1

    def load(self, rel: str) -> LoadedVideo:
        """Resolve, decode and sample one clip, or raise Reject with a ``video_*`` reason."""
        path = resolve_video_path(rel, self.opts.root)
        future = self._executor().submit(decode_video, str(path), rel, self.opts)
        try:
            return future.result(timeout=self.opts.timeout_s)
        except cf.TimeoutError:
            self._kill()
            raise Reject("video_timeout", f"video {rel!r}: decoding took longer than {self.opts.timeout_s:g} s; "
                                          "the decoder was stopped") from None
        except cf.process.BrokenProcessPool:
            self._kill()
            raise Reject("video_unreadable", f"video {rel!r}: the decoder crashed or ran out of its "
                                             f"{self.opts.memory_limit_bytes >> 20} MiB of memory") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def _without_main():
    """Hide the parent's ``__main__`` while the decoder child starts.

    forkserver (like spawn) re-runs the parent's main script in each child unless it is guarded by
    ``if __name__ == "__main__"``: a user's script that calls ``build()`` at top level, or code piped to
    ``python -``, would run again in the child (or fail to be found), and every clip would be lost to a
    crashed decoder. The child needs only this module, which it imports by name.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


#: How long a fresh decoder child may take to start (a system fault beyond it, not a clip's).
_START_TIMEOUT_S = 120.0


def _ready() -> bool:
    return True


def _limit_memory(limit: int) -> None:
    """Cap the child's address space at what it holds once PyAV and Pillow are loaded, plus ``limit``."""
    import av  # noqa: F401  (loaded before the cap: the limit is for decoding, not for shared libraries)
    from PIL import Image  # noqa: F401

    if limit <= 0:
        return
    try:
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return  # not Linux: no cap rather than a wrong one
    resource.setrlimit(resource.RLIMIT_AS, (vm + limit, vm + limit))


def decode_video(path: str, rel: str, opts: VideoOptions) -> LoadedVideo:
    """Decode one clip in this process (the child's entry point; tests call it directly too).

    Two passes over the file: the first reads packets without decoding (the frame count, cheap and
    bounded by the duration limit), the second decodes in order and keeps only the sampled frames.
    """
    import av  # only a video build needs PyAV

    av_errors = (av.error.FFmpegError,) + _AV_ERRORS_FALLBACK
    try:
        f = _open_fd(Path(path), rel)
    except Reject as rej:
        raise Reject("video_unreadable", rej.rejection.detail.replace("image", "video", 1)) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise Reject("video_unreadable", f"video {rel!r} is an empty file (0 bytes)")
        if size > opts.max_file_bytes:
            raise Reject("video_too_large", f"video {rel!r} is {size} bytes, over the {opts.max_file_bytes}-byte limit")
        try:
            return _decode(av, f, rel, opts)
        except Reject:
            raise
        except MemoryError:
            raise Reject("video_unreadable", f"video {rel!r}: the decoder ran out of its "
                                             f"{opts.memory_limit_bytes >> 20} MiB of memory") from None
        except av_errors as exc:
            raise Reject("video_unreadable", f"video {rel!r} cannot be decoded: {type(exc).__name__}: {exc}") from None


def _decode(av, f, rel: str, opts: VideoOptions) -> LoadedVideo:
    with av.open(f, mode="r") as container:
        fmt = container.format.name
        if set(fmt.split(",")) & _STILL_FORMATS:
            raise Reject("video_unreadable", f"video {rel!r} is a still image ({fmt}), not a video")
        if not container.streams.video:
            raise Reject("video_unreadable", f"video {rel!r} has no video track")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or ctx.codec is None:
            raise Reject("video_unreadable", f"video {rel!r}: no decoder for its codec")
        width, height = ctx.width, ctx.height
        if width <= 0 or height <= 0:
            raise Reject("video_unreadable", f"video {rel!r} has no frame size ({width}x{height})")
        if width * height > opts.max_pixels:
            raise Reject("video_too_large", f"video {rel!r} is {width}x{height}, over the "
                                            f"{opts.max_pixels}-pixel limit per frame")
        declared = _declared_duration(container, stream)
        if declared is not None and declared > opts.max_duration_s:
            raise Reject("video_too_long", f"video {rel!r} lasts {declared:.0f} s, over the "
                                           f"{opts.max_duration_s:g} s limit")
        total, first_pts, last_pts = _count_frames(container, stream, rel, opts)
        tb = float(stream.time_base) if stream.time_base else 0.0
        if total == 0:
            raise Reject("video_unreadable", f"video {rel!r} has no frames")
        span = (last_pts - first_pts) * tb if tb else 0.0
        avg_fps = float(stream.average_rate) if stream.average_rate else (total / span if span > 0 else 0.0)
        duration = declared if declared is not None else (total / avg_fps if avg_fps > 0 else span)
        wanted = sample_indices(total, avg_fps, opts.frames, opts.fps)
        frames = _decode_sampled(container, stream, wanted, first_pts, tb, rel, opts)
        if len(frames) < len(wanted):
            raise Reject("video_unreadable", f"video {rel!r}: {total} frames in the container but only "
                                             f"{len(frames)} of the {len(wanted)} sampled could be decoded "
                                             "(truncated or corrupt)")
        return LoadedVideo(rel_path=rel, frames=tuple(frames), total_frames=total, duration_s=round(duration, 6),
                           avg_fps=round(avg_fps, 6), width=width, height=height, codec=ctx.codec.name,
                           container=fmt)


def _declared_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _count_frames(container, stream, rel: str, opts: VideoOptions) -> tuple[int, int, int]:
    """Packets of the video stream, without decoding: the frame count and the pts range.

    A container that declares no duration is still bounded: more packets than the duration limit allows
    at 1000 frames/s, or a pts past the limit, is ``video_too_long``.
    """
    tb = float(stream.time_base) if stream.time_base else 0.0
    cap = int(opts.max_duration_s * 1000) + 1
    total, first, last = 0, None, None
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet at the end
            continue
        total += 1
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is not None:
            first = pts if first is None else min(first, pts)
            last = pts if last is None else max(last, pts)
        if total > cap or (tb and first is not None and (last - first) * tb > opts.max_duration_s):
            raise Reject("video_too_long", f"video {rel!r} runs past the {opts.max_duration_s:g} s limit")
    container.seek(0)
    return total, first or 0, last or 0


def _decode_sampled(container, stream, wanted: list[int], first_pts: int, tb: float, rel: str,
                    opts: VideoOptions) -> list[SampledFrame]:
    """Decode in presentation order, keep only the wanted frames (as JPEG), stop after the last one."""
    keep = set(wanted)
    last = wanted[-1]
    out: list[SampledFrame] = []
    stream.thread_type = "AUTO"
    for i, frame in enumerate(_frames_in_order(container, stream)):
        if i in keep:
            pts = frame.pts if frame.pts is not None else 0
            out.append(_to_jpeg(frame, i, max(0.0, (pts - first_pts) * tb), opts))
        if i >= last:
            break
    return out


def _frames_in_order(container, stream):
    """Decoded frames in presentation order (a decoder gives them so; this only guards the count)."""
    for frame in container.decode(stream):
        yield frame


def _to_jpeg(frame, index: int, time_s: float, opts: VideoOptions) -> SampledFrame:
    """The frame as stored: squashed to ``opts.size`` (as the video processor resizes, PIL bicubic), or with
    ``opts.max_side`` its longer side at most that (aspect kept; the trainer then resizes as the processor
    would), re-encoded as JPEG."""
    from PIL import Image

    img = frame.to_image()  # RGB
    resample = Image.Resampling[opts.resample.upper()]
    if opts.max_side is not None:
        scale = min(1.0, opts.max_side / max(img.size))
        if scale < 1.0:
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, resample)
    elif opts.size is not None and (img.height, img.width) != tuple(opts.size):
        h, w = opts.size
        img = img.resize((w, h), resample)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=opts.jpeg_quality)
    return SampledFrame(index=index, time_s=round(time_s, 6), data=buf.getvalue(), width=img.width, height=img.height)
