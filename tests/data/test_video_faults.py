"""Hostile clips through the whole build, a byte-level fuzz of real clips, and the same bytes on Ray.

Every record read ends as a row or as one quarantine line with its own reason; never a traceback, never a
hang (the decoder child has a per-clip time limit), and read = kept + quarantined.
"""

from __future__ import annotations

import json
import os
import random
import time
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from parsit_data.build import build
from parsit_data.config import BuildConfig
from parsit_data.format import read_shard
from parsit_data.reasons import VIDEO_REASONS
from parsit_data.video import sample_indices
from video_support import make_audio_only, make_clip
from vision_support import OV_SIGLIP, llava_onevision_processor, save_processor

pytest.importorskip("av")


@pytest.fixture(scope="module")
def ov_dir(tmp_path_factory) -> Path:
    return save_processor(llava_onevision_processor(**OV_SIGLIP), tmp_path_factory.mktemp("ov") / "proc")


def _record(rel: str, k: int) -> dict:
    return {"id": f"r{k}-{rel}", "video": rel, "conversations": [
        {"from": "human", "value": "<image>\nWhat happens?"}, {"from": "gpt", "value": "Something."}]}


def _run(tmp_path: Path, rels: list[str], root: Path, ov_dir: Path, **kw):
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps(_record(r, k)) + "\n" for k, r in enumerate(rels)), encoding="utf-8")
    out = tmp_path / kw.pop("name", "out")
    cfg = BuildConfig(inputs=[str(src)], out=str(out), video_root=str(root), processor=str(ov_dir),
                      near_duplicates="off", shard_rows=8, **{"video_frames": 4, **kw})
    m = build(cfg)
    rows = [r for s in m.shards for r in read_shard(out / s.path).to_pylist()]
    q = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert m.totals.read == len(rels) == m.totals.kept + m.totals.quarantined
    assert len(rows) + len(q) == len(rels)
    return m, rows, q, out


def _unknown_codec(good: bytes) -> bytes:
    """The same MP4 with its sample entry's codec renamed ('avc1' -> 'zzzz'): no decoder for it."""
    assert good.count(b"avc1") >= 1
    return good.replace(b"avc1", b"zzzz")


@pytest.mark.timeout(300)
def test_every_hostile_clip_ends_in_the_shards_or_with_its_own_reason(tmp_path, ov_dir):
    root = tmp_path / "videos"
    root.mkdir()
    make_clip(root / "ok.mp4", 30)
    good = (root / "ok.mp4").read_bytes()
    (root / "zero.mp4").write_bytes(b"")
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "text.mp4").write_bytes(b"this is not a video at all\n" * 100)
    Image.new("RGB", (64, 48), "red").save(root / "picture.mp4", format="PNG")
    (root / "codec.mp4").write_bytes(_unknown_codec(good))
    make_audio_only(root / "audio.mkv")
    os.symlink("loop_b.mp4", root / "loop_a.mp4")
    os.symlink("loop_a.mp4", root / "loop_b.mp4")
    os.mkfifo(root / "fifo.mp4")
    (tmp_path / "outside.mp4").write_bytes(good)
    os.symlink(tmp_path / "outside.mp4", root / "escape.mp4")
    make_clip(root / "long.mkv", 2, codec="ffv1", size=(32, 32), pts=[0, 11 * 3600 * 1000], time_base=Fraction(1, 1000))
    make_clip(root / "8k.mkv", 1, codec="mjpeg", size=(7680, 4320), pix_fmt="yuvj420p")
    vfr_pts = [0, 40, 80, 500, 520, 2000, 2010, 2020]
    make_clip(root / "vfr.mkv", len(vfr_pts), codec="ffv1", size=(96, 64), pts=vfr_pts, time_base=Fraction(1, 1000))
    expected = {
        "ok.mp4": "kept", "vfr.mkv": "kept",
        "missing.mp4": "video_missing", "../outside.mp4": "video_outside_root", "/etc/passwd": "video_outside_root",
        "escape.mp4": "video_outside_root", "zero.mp4": "video_unreadable", "truncated.mp4": "video_unreadable",
        "text.mp4": "video_unreadable", "picture.mp4": "video_unreadable", "codec.mp4": "video_unreadable",
        "audio.mkv": "video_unreadable", "loop_a.mp4": "video_unreadable", "fifo.mp4": "video_unreadable",
        "long.mkv": "video_too_long", "8k.mkv": "video_too_large",
    }
    t0 = time.monotonic()
    m, rows, q, _ = _run(tmp_path, list(expected), root, ov_dir, video_timeout_s=30)
    got = {r["video_path"]: "kept" for r in rows} | {x["record"]["video"]: x["reason"] for x in q}
    assert got == expected
    assert all(x["detail"] and x["detail"].startswith("video ") for x in q)
    vfr = next(r for r in rows if r["video_path"] == "vfr.mkv")
    want = sample_indices(len(vfr_pts), vfr["video_info"]["fps"], 4)
    assert vfr["video_frame_indices"] == want
    assert vfr["video_frame_times"] == pytest.approx([vfr_pts[i] / 1000 for i in want], abs=1e-3)
    assert time.monotonic() - t0 < 200


@pytest.mark.timeout(300)
def test_a_hanging_decode_costs_its_record_only(tmp_path, ov_dir):
    root = tmp_path / "videos"
    root.mkdir()
    make_clip(root / "slow.avi", 600, codec="mpeg4", size=(320, 240))
    make_clip(root / "ok.mp4", 10)
    # frames=600: the slow clip decodes every frame, far past the limit; the others need a fraction of it
    t0 = time.monotonic()
    m, rows, q, _ = _run(tmp_path, ["ok.mp4", "slow.avi", "ok.mp4"], root, ov_dir, video_frames=600,
                         video_timeout_s=0.3)
    assert [(x["record"]["video"], x["reason"]) for x in q] == [("slow.avi", "video_timeout")]
    assert [r["video_path"] for r in rows] == ["ok.mp4", "ok.mp4"]  # the next clip gets a fresh child
    assert time.monotonic() - t0 < 120


@pytest.mark.timeout(400)
def test_fuzzed_clips_through_the_build_never_a_traceback_never_a_hang(tmp_path, ov_dir):
    """Truncations and bit flips of real clips of three containers, built: every record accounted for."""
    rng = random.Random(20)
    src = tmp_path / "src"
    src.mkdir()
    root = tmp_path / "fuzz"
    root.mkdir()
    rels = []
    for name, codec in (("f.mp4", "libx264"), ("f.webm", "libvpx-vp9"), ("f.avi", "mpeg4")):
        make_clip(src / name, 20, codec=codec, size=(64, 48))
        data = (src / name).read_bytes()
        for k in range(10):
            b = bytearray(data)
            if k % 3 == 0:
                b = b[: rng.randrange(1, len(b))]
            for _ in range(rng.choice([1, 4, 32])):
                pos = rng.randrange(len(b))
                b[pos] ^= 1 << rng.randrange(8)
            rel = f"{k}_{name}"
            (root / rel).write_bytes(bytes(b))
            rels.append(rel)
    t0 = time.monotonic()
    m, rows, q, _ = _run(tmp_path, rels, root, ov_dir, video_timeout_s=20)
    assert time.monotonic() - t0 < 300
    assert {x["reason"] for x in q} <= set(VIDEO_REASONS)
    assert "video_unreadable" in {x["reason"] for x in q}  # the fuzz did break some clips
    for r in rows:
        assert 1 <= len(r["video_frames"]) <= 4 and all(f[:2] == b"\xff\xd8" for f in r["video_frames"])
        assert r["num_video_tokens"] == len(r["video_frames"]) * 196 + 1


def _outputs(out: Path) -> dict[str, bytes]:
    files = {f"shards/{p.name}": p.read_bytes() for p in sorted((out / "shards").iterdir())}
    files["quarantine.jsonl"] = (out / "quarantine.jsonl").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("timing")
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return files


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("no_ray_left")
def test_ray_with_2_workers_writes_the_local_bytes(tmp_path, ov_dir):
    root = tmp_path / "videos"
    root.mkdir()
    for k in range(6):
        make_clip(root / f"c{k}.mp4", 12 + 7 * k, size=(80 + 2 * k, 48))
    (root / "bad.mp4").write_bytes(b"not a video")
    rels = [f"c{k}.mp4" for k in range(6)] + ["bad.mp4", "missing.mp4"]
    rels = rels * 2  # 16 records, 2 partitions of 8: both workers decode
    _, rows, q, local = _run(tmp_path, rels, root, ov_dir, engine="local", name="local")
    assert len(rows) == 12 and sorted({x["reason"] for x in q}) == ["video_missing", "video_unreadable"]
    _, _, _, on_ray = _run(tmp_path, rels, root, ov_dir, engine="ray", workers=2, name="ray")
    want, got = _outputs(local), _outputs(on_ray)
    assert got.keys() == want.keys() and len([k for k in got if k.startswith("shards/")]) == 2
    for name in want:
        assert got[name] == want[name], f"{name} differs between local and ray x2"


@pytest.mark.timeout(180)
def test_a_user_script_without_a_main_guard_runs_once_and_builds(tmp_path, ov_dir):
    """forkserver re-runs an unguarded __main__ in each child: the decoder child must not run the user's script."""
    import subprocess
    import sys

    root = tmp_path / "videos"
    root.mkdir()
    make_clip(root / "ok.mp4", 10)
    src = tmp_path / "data.jsonl"
    src.write_text(json.dumps(_record("ok.mp4", 0)) + "\n")
    runs = tmp_path / "runs.txt"
    script = tmp_path / "user_script.py"
    script.write_text(f"""
from parsit_data.build import build
from parsit_data.config import BuildConfig
open({str(runs)!r}, "a").write("ran\\n")
m = build(BuildConfig(inputs=[{str(src)!r}], out={str(tmp_path / 'out')!r}, video_root={str(root)!r},
                      processor={str(ov_dir)!r}, video_frames=2, near_duplicates="off"))
print("kept", m.totals.kept)
""")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    for how in ([sys.executable, str(script)], [sys.executable, "-"]):
        runs.unlink(missing_ok=True)
        stdin = script.read_text() if how[-1] == "-" else None
        done = subprocess.run(how, input=stdin, capture_output=True, text=True, timeout=150, env=env,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "kept 1" in done.stdout and runs.read_text() == "ran\n"
