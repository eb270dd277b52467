"""Real clips for the video tests, made with PyAV: each frame carries its own index in its pixels.

A frame's top band is split into :data:`BITS` cells, cell k white when bit k of the frame index is set;
the cells are large and flat, so the index survives lossy codecs and the build's JPEG re-encode.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

BITS = 10


def frame_pixels(index: int, width: int, height: int) -> np.ndarray:
    img = np.full((height, width, 3), 40, dtype=np.uint8)
    band = max(1, height // 2)
    for k in range(BITS):
        x0, x1 = k * width // BITS, (k + 1) * width // BITS
        if index >> k & 1:
            img[:band, x0:x1] = 230
    return img


def read_index(rgb: np.ndarray) -> int:
    """The index a frame carries (from the centre of each cell of its top band)."""
    h, w = rgb.shape[:2]
    band = max(1, h // 2)
    value = 0
    for k in range(BITS):
        x0, x1 = k * w // BITS, (k + 1) * w // BITS
        cx0, cx1 = x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4
        cell = rgb[band // 4: max(band // 4 + 1, 3 * band // 4), cx0:max(cx0 + 1, cx1)]
        if cell.mean() > 135:
            value |= 1 << k
    return value


def make_clip(path: Path, frames: int, *, codec: str = "libx264", size=(160, 96), fps: int = 25,
              pts: list[int] | None = None, time_base: Fraction | None = None, pix_fmt: str = "yuv420p",
              options: dict | None = None) -> Path:
    """Write a clip of ``frames`` frames; ``pts`` (in ``time_base`` units) makes a variable frame rate."""
    import av

    w, h = size
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_pixels(i, w, h), format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mp2", rate=44100)
        samples = np.zeros((1, 1152 * 10), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
