"""Video decoding: which frames are sampled, their times, and every hostile clip a reason of its own.

Clips are made here with PyAV (several codecs and containers, 1 to 305 frames, odd sizes); each frame
carries its index in its pixels (video_support.py), so a test reads back from the stored JPEGs which
frames were really kept, not what the sampler said it would keep.
"""

from __future__ import annotations

import io
import os
import random
import time
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from parsit_data.records import Reject
from parsit_data.video import (VIDEO_REASONS, VideoDecoder, VideoOptions, decode_video,
                               onevision_video_tokens, sample_indices)
from video_support import make_audio_only, make_clip, read_index

av = pytest.importorskip("av")  # a declared dependency: a missing install fails test_pyav_is_installed below


def test_pyav_is_installed():
    assert av.__version__


def stored_indices(video) -> list[int]:
    return [read_index(np.asarray(Image.open(io.BytesIO(f.data)).convert("RGB"))) for f in video.frames]


# -- the sampling rule -------------------------------------------------------------------------------------

@pytest.mark.parametrize("total", [1, 2, 7, 8, 9, 31, 32, 33, 100, 305, 1801, 10_007])
@pytest.mark.parametrize("frames", [1, 2, 8, 32, 64])
def test_uniform_sampling_is_llava_next_linspace_and_never_repeats_a_frame(total, frames):
    got = sample_indices(total, 25.0, frames)
    if total <= frames:
        assert got == list(range(total))  # a short clip keeps every frame, none twice
    else:
        assert got == np.linspace(0, total - 1, frames, dtype=int).tolist()
        assert got[0] == 0 and len(set(got)) == frames
        assert frames == 1 or got[-1] == total - 1  # first and last frame both in


def test_fps_sampling_steps_by_rounded_rate_and_falls_back_to_uniform_over_the_cap():
    assert sample_indices(100, 30.0, 64, fps=1.0) == list(range(0, 100, 30))
    assert sample_indices(100, 30.0, 64, fps=7.0) == list(range(0, 100, 4))  # round(30 / 7) = 4
    # 3000 frames at 1 fps is 100 samples, over the cap of 32: uniform 32 instead
    assert sample_indices(3000, 30.0, 32, fps=1.0) == np.linspace(0, 2999, 32, dtype=int).tolist()
    assert sample_indices(10, 30.0, 4, fps=100.0) == np.linspace(0, 9, 4, dtype=int).tolist()  # step 1 -> 10 > 4


def test_options_refuse_nonsense():
    for bad in (dict(frames=0), dict(fps=0.0), dict(fps=float("nan")), dict(max_side=0)):
        with pytest.raises(ValueError):
            VideoOptions(**bad)


def test_onevision_video_tokens_follow_the_processor_rule():
    assert onevision_video_tokens(8, 729) == 8 * 14 * 14 + 1  # SigLIP-384: 27 patches -> 14 pooled
    assert onevision_video_tokens(1, 576) == 12 * 12 + 1  # CLIP-336: 24 -> 12
    assert onevision_video_tokens(3, 25) == 3 * 9 + 1  # 5 -> ceil(2.5) = 3


# -- real clips --------------------------------------------------------------------------------------------

CLIPS = [  # name, codec, frames, size
    ("h264.mp4", "libx264", 40, (160, 96)),
    ("vp9.webm", "libvpx-vp9", 12, (130, 70)),
    ("mpeg4.avi", "mpeg4", 305, (64, 48)),
    ("ffv1_odd.mkv", "ffv1", 3, (33, 17)),
    ("one.mp4", "libx264", 1, (64, 64)),
]


@pytest.mark.parametrize("name,codec,n,size", CLIPS)
def test_the_sampled_frames_are_the_frames_stored(tmp_path, name, codec, n, size):
    make_clip(tmp_path / name, n, codec=codec, size=size)
    video = decode_video(str(tmp_path / name), name, VideoOptions(root=tmp_path, frames=8))
    want = sample_indices(n, 25.0, 8)
    assert video.total_frames == n
    assert [f.index for f in video.frames] == want
    assert stored_indices(video) == want  # read back from the JPEG pixels
    assert [f.time_s for f in video.frames] == pytest.approx([i / 25 for i in want], abs=1e-3)
    assert (video.width, video.height) == size and video.avg_fps == pytest.approx(25.0)
    assert all((f.width, f.height) == size for f in video.frames)  # no size given: kept at its own


def test_frames_are_stored_at_most_max_side(tmp_path):
    make_clip(tmp_path / "big.mp4", 5, size=(640, 360))
    video = decode_video(str(tmp_path / "big.mp4"), "big.mp4", VideoOptions(root=tmp_path, frames=3, max_side=128))
    assert [(f.width, f.height) for f in video.frames] == [(128, 72)] * 3
    assert stored_indices(video) == [0, 2, 4]


def test_variable_frame_rate_keeps_each_frame_s_own_time(tmp_path):
    tb = Fraction(1, 1000)
    pts = [0, 40, 80, 500, 520, 2000, 2010, 2020]  # bursts and gaps, in ms
    make_clip(tmp_path / "vfr.mkv", len(pts), codec="ffv1", size=(96, 64), pts=pts, time_base=tb)
    video = decode_video(str(tmp_path / "vfr.mkv"), "vfr.mkv", VideoOptions(root=tmp_path, frames=4))
    want = sample_indices(len(pts), video.avg_fps, 4)
    assert stored_indices(video) == want
    assert [f.time_s for f in video.frames] == pytest.approx([pts[i] / 1000 for i in want], abs=1e-3)


def test_fps_sampling_on_a_real_clip(tmp_path):
    make_clip(tmp_path / "c.mp4", 75, fps=25)  # 3 s at 25 fps; 2 fps -> every round(12.5) = 12th frame
    video = decode_video(str(tmp_path / "c.mp4"), "c.mp4", VideoOptions(root=tmp_path, frames=32, fps=2.0))
    assert stored_indices(video) == list(range(0, 75, 12))


# -- hostile clips -----------------------------------------------------------------------------------------

def reject_of(decoder: VideoDecoder, rel: str) -> Reject:
    with pytest.raises(Reject) as exc:
        decoder.load(rel)
    assert exc.value.reason in VIDEO_REASONS and exc.value.detail
    return exc.value


@pytest.fixture()
def hostile_root(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    make_clip(root / "ok.mp4", 30)
    good = (root / "ok.mp4").read_bytes()
    (root / "zero.mp4").write_bytes(b"")
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "text.mp4").write_bytes(b"this is not a video at all\n" * 100)
    Image.new("RGB", (64, 48), "red").save(root / "picture.mp4", format="PNG")
    (root / "junk.mkv").write_bytes(bytes(random.Random(0).getrandbits(8) for _ in range(5000)))
    make_audio_only(root / "audio.mkv")
    os.symlink("loop_b.mp4", root / "loop_a.mp4")
    os.symlink("loop_a.mp4", root / "loop_b.mp4")
    os.mkfifo(root / "fifo.mp4")
    (tmp_path / "outside.mp4").write_bytes(good)
    os.symlink(tmp_path / "outside.mp4", root / "escape.mp4")
    # 2 frames 11 hours apart: a "10-hour clip" that costs nothing to make
    make_clip(root / "long.mkv", 2, codec="ffv1", size=(32, 32), pts=[0, 11 * 3600 * 1000], time_base=Fraction(1, 1000))
    make_clip(root / "8k.mkv", 1, codec="mjpeg", size=(7680, 4320), pix_fmt="yuvj420p")
    return root


EXPECTED = {
    "missing.mp4": "video_missing",
    "../outside.mp4": "video_outside_root",
    "/etc/passwd": "video_outside_root",
    "escape.mp4": "video_outside_root",
    "zero.mp4": "video_unreadable",
    "truncated.mp4": "video_unreadable",
    "text.mp4": "video_unreadable",
    "picture.mp4": "video_unreadable",
    "junk.mkv": "video_unreadable",
    "audio.mkv": "video_unreadable",
    "loop_a.mp4": "video_unreadable",
    "fifo.mp4": "video_unreadable",
    "long.mkv": "video_too_long",
    "8k.mkv": "video_too_large",
}


def test_every_hostile_clip_gets_its_own_reason_and_the_decoder_survives(hostile_root):
    with VideoDecoder(VideoOptions(root=hostile_root, frames=4, max_duration_s=10 * 3600, timeout_s=30)) as dec:
        got = {rel: reject_of(dec, rel).reason for rel in EXPECTED}
        assert got == EXPECTED
        assert stored_indices(dec.load("ok.mp4")) == sample_indices(30, 25.0, 4)  # the same child goes on
    assert "still image" in str(reject_of(VideoDecoder(VideoOptions(root=hostile_root)), "picture.mp4"))


def test_a_decode_over_the_time_limit_is_stopped_and_the_next_clip_decodes(tmp_path):
    make_clip(tmp_path / "slow.avi", 600, codec="mpeg4", size=(320, 240))
    make_clip(tmp_path / "ok.mp4", 10)
    with VideoDecoder(VideoOptions(root=tmp_path, frames=600, timeout_s=0.05)) as dec:
        t0 = time.monotonic()
        assert reject_of(dec, "slow.avi").reason == "video_timeout"
        assert time.monotonic() - t0 < 10  # bounded: the child is killed, not waited for
        assert dec.restarts == 1
        dec.opts = VideoOptions(root=tmp_path, frames=4, timeout_s=30)
        assert stored_indices(dec.load("ok.mp4")) == sample_indices(10, 25.0, 4)


def test_the_decoder_s_memory_is_capped(tmp_path):
    make_clip(tmp_path / "8k.mkv", 1, codec="mjpeg", size=(7680, 4320), pix_fmt="yuvj420p")  # ~150 MB decoded
    opts = VideoOptions(root=tmp_path, frames=1, max_pixels=7680 * 4320, timeout_s=60, max_side=384)
    with VideoDecoder(VideoOptions(**{**opts.__dict__, "memory_limit_bytes": 48 << 20})) as dec:
        rej = reject_of(dec, "8k.mkv")
        assert rej.reason == "video_unreadable" and "MiB" in rej.detail
        dec.opts = opts  # the next child gets the default limit (2 GiB of working memory) ...
        dec._kill()
        video = dec.load("8k.mkv")  # ... and decodes the same frame
    assert (video.width, video.height) == (7680, 4320) and video.frames[0].width == 384


# -- byte-level fuzz ---------------------------------------------------------------------------------------

def test_fuzzed_clips_end_in_frames_or_a_reason_never_a_traceback_or_a_hang(tmp_path):
    """Truncations and bit flips of real clips of three containers: every one is decoded or refused."""
    rng = random.Random(20)
    sources = {}
    for name, codec in (("f.mp4", "libx264"), ("f.webm", "libvpx-vp9"), ("f.avi", "mpeg4")):
        make_clip(tmp_path / name, 20, codec=codec, size=(64, 48))
        sources[name] = (tmp_path / name).read_bytes()
    root = tmp_path / "fuzz"
    root.mkdir()
    cases = []
    for name, data in sources.items():
        for k in range(12):
            b = bytearray(data)
            if k % 3 == 0:
                b = b[: rng.randrange(1, len(b))]
            for _ in range(rng.choice([1, 4, 32])):
                pos = rng.randrange(len(b))
                b[pos] ^= 1 << rng.randrange(8)
            rel = f"{k}_{name}"
            (root / rel).write_bytes(bytes(b))
            cases.append(rel)
    outcomes = {}
    with VideoDecoder(VideoOptions(root=root, frames=6, timeout_s=20)) as dec:
        t0 = time.monotonic()
        for rel in cases:
            try:
                video = dec.load(rel)
            except Reject as rej:
                outcomes[rel] = rej.reason
            else:
                assert 1 <= len(video.frames) <= 6 and all(f.data[:2] == b"\xff\xd8" for f in video.frames)
                outcomes[rel] = "decoded"
        elapsed = time.monotonic() - t0
    assert len(outcomes) == len(cases)  # every record accounted for
    assert set(outcomes.values()) <= set(VIDEO_REASONS) | {"decoded"}
    assert "video_unreadable" in outcomes.values()  # the fuzz did break some clips
    assert elapsed < 120


def test_frames_are_squashed_to_the_processor_size_when_given(tmp_path):
    make_clip(tmp_path / "wide.mp4", 4, size=(320, 96))
    video = decode_video(str(tmp_path / "wide.mp4"), "wide.mp4", VideoOptions(root=tmp_path, frames=4, size=(64, 48)))
    assert [(f.width, f.height) for f in video.frames] == [(48, 64)] * 4  # (height, width) = (64, 48)
    assert stored_indices(video) == [0, 1, 2, 3]
