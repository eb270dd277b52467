"""The report's Videos section and ``inspect`` on video rows.

The statistics under the section are checked on partition columns written by hand (merging, and that a
build without video keeps its part files and report unchanged); the section itself and ``inspect`` on a
real build of generated clips, whose durations, frame rates, sizes, sampled frames and refusals are
known clip by clip.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from parsit_data.build import build
from parsit_data.config import BuildConfig
from parsit_data.format import read_shard
from parsit_data.report.model import report_json_schema
from parsit_data.stats import PartitionStats, SourceDists


def _video_cols(specs: list[dict | None]) -> dict[str, list]:
    """Partition columns of the video contract: one row per spec (None: a row without video)."""
    n = len(specs)
    return {
        "sample_id": [f"r{i}" for i in range(n)], "input_ids": [[1, -201 if s else 2, 3, i] for i, s in enumerate(specs)],
        "labels": [[-100, -100, 3, i] for i in range(n)], "length": [4 + (s["tokens"] if s else 0) for s in specs],
        "supervised_tokens": [2] * n, "num_turns": [2] * n, "images": [[] for _ in range(n)],
        "image_sizes": [[] for _ in range(n)], "num_image_tokens": [[] for _ in range(n)],
        "video_path": [f"c{i}.mp4" if s else None for i, s in enumerate(specs)],
        "video_frames": [[bytes([i, k]) for k in range(s["sampled"])] if s else [] for i, s in enumerate(specs)],
        "video_frame_indices": [list(range(s["sampled"])) if s else [] for s in specs],
        "video_frame_times": [[k / 25 for k in range(s["sampled"])] if s else [] for s in specs],
        "video_info": [{"duration_s": s["dur"], "fps": s["fps"], "width": s["w"], "height": s["h"],
                        "frames": s["frames"]} if s else None for s in specs],
        "num_video_tokens": [s["tokens"] if s else 0 for s in specs],
    }


SPECS = [
    {"dur": 2.0, "fps": 25.0, "w": 320, "h": 240, "frames": 50, "sampled": 8, "tokens": 8 * 196 + 1},
    None,
    {"dur": 12.345, "fps": 29.97, "w": 1920, "h": 1080, "frames": 370, "sampled": 8, "tokens": 8 * 196 + 1},
    {"dur": 0.2, "fps": 30.0, "w": 97, "h": 61, "frames": 6, "sampled": 6, "tokens": 6 * 196 + 1},
]


def test_video_statistics_merge_to_the_whole_and_stay_out_of_builds_without_video():
    whole, a, b = PartitionStats(), PartitionStats(), PartitionStats()
    whole.observe_partition(0, "s", _video_cols(SPECS), [])
    a.observe_partition(0, "s", _video_cols(SPECS[:2]), [])
    b.observe_partition(1, "s", _video_cols(SPECS[2:]), [])
    merged = PartitionStats()
    for p in (a, b):
        merged.merge(PartitionStats.from_json(json.loads(json.dumps(p.to_json()))))
    got, want = merged.dists["s"], whole.dists["s"]
    assert {k: h.to_json() for k, h in got.video_hists.items()} == {k: h.to_json() for k, h in want.video_hists.items()}
    h = want.video_hists
    assert h["video_duration_ms"].n == 3 and (h["video_duration_ms"].min, h["video_duration_ms"].max) == (200, 12345)
    assert (h["video_fps_centi"].min, h["video_fps_centi"].max) == (2500, 3000)
    assert h["video_frames"].total == 22 and h["video_tokens"].total == 22 * 196 + 3
    assert (h["video_width"].max, h["video_height"].min) == (1920, 61) and sum(want.video_sizes.values()) == 3
    # Two rows with the same text and different clips are different content (the duplicate check).
    twins = _video_cols([SPECS[0], SPECS[0]])
    twins["input_ids"][1] = list(twins["input_ids"][0])
    p = PartitionStats()
    p.observe_partition(0, "s", twins, [])
    digests, _, _ = p.dists["s"].digest_array()
    assert digests[0] != digests[1]
    # Without a video row nothing video is kept: part files (and so the report) as before video.
    plain = PartitionStats()
    plain.observe_partition(0, "s", _video_cols([None, None]), [])
    assert "video_hists" not in plain.dists["s"].to_json() and not SourceDists.from_json(
        plain.dists["s"].to_json()).video_hists


# -- a real build ------------------------------------------------------------------------------------

FRAMES = 8  # --video-frames
#: name -> (frames, fps, (width, height), codec): a short clip keeps all its frames.
CLIPS = {"a.mp4": (40, 25, (160, 96), "libx264"), "b.mp4": (5, 10, (98, 66), "libx264"),
         "c.avi": (120, 30, (64, 48), "mpeg4")}
PER_FRAME = math.ceil(27 / 2) ** 2  # SigLIP-384/14: 27x27 patches, pooled 2x2 -> 14x14 per frame


def _conv(q: str) -> list[dict]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": "A counter goes up."}]


@pytest.fixture(scope="module")
def video_build(tmp_path_factory) -> Path:
    """Three clips kept, one missing and one that is not a video refused, one text row."""
    pytest.importorskip("av")
    from video_support import make_clip
    from vision_support import OV_SIGLIP, llava_onevision_processor, save_processor

    root = tmp_path_factory.mktemp("video-report")
    clips = root / "clips"
    clips.mkdir()
    for name, (n, fps, size, codec) in CLIPS.items():
        make_clip(clips / name, n, size=size, fps=fps, codec=codec)
    (clips / "notes.mp4").write_text("these are not video bytes\n" * 20)
    records = [{"id": f"v-{name}", "video": name, "conversations": _conv("<image>\nWhat happens?")} for name in CLIPS]
    records += [{"id": "gone", "video": "gone.mp4", "conversations": _conv("<video>\nWhat happens?")},
                {"id": "fake", "video": "notes.mp4", "conversations": _conv("<video>\nWhat happens?")},
                {"id": "text", "conversations": _conv("Say hi.")}]
    src = root / "data.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = root / "out"
    proc = save_processor(llava_onevision_processor(**OV_SIGLIP), root / "ov")
    build(BuildConfig(inputs=[str(src)], out=str(out), processor=str(proc), video_root=str(clips),
                      video_frames=FRAMES, near_duplicates="off"))
    return out


def test_report_has_the_videos_kept_and_refused(video_build):
    rep = json.loads((video_build / "report.json").read_text())
    jsonschema.validate(rep, report_json_schema())
    rows = [r for p in sorted((video_build / "shards").iterdir()) for r in read_shard(p).to_pylist()]
    vids = [r for r in rows if r["video_path"]]
    sampled = {name: min(FRAMES, n) for name, (n, *_) in CLIPS.items()}
    v = rep["video"]
    assert v["rows"] == 3 and v["frames"] == sum(sampled.values()) == 21
    assert v["tokens"] == sum(s * PER_FRAME + 1 for s in sampled.values())
    assert v["rejected_by_reason"] == {"video_missing": 1, "video_unreadable": 1} and v["rejected"] == 2
    assert v["sampling"]["frames"] == FRAMES and len(v["sizes"]) == 3
    # Each distribution against the shards read back (an independent path) and the clips as made.
    o = rep["overall"]
    info = {r["video_path"]: r["video_info"] for r in vids}
    for name, (n, fps, (w, h), _) in CLIPS.items():
        assert info[name]["frames"] == n and (info[name]["width"], info[name]["height"]) == (w, h)
        assert info[name]["duration_s"] == pytest.approx(n / fps, abs=0.11) and info[name]["fps"] == pytest.approx(fps)
    for metric, values in {
        "video_duration_ms": [round(i["duration_s"] * 1000) for i in info.values()],
        "video_fps_centi": [round(i["fps"] * 100) for i in info.values()],
        "video_width": [i["width"] for i in info.values()], "video_height": [i["height"] for i in info.values()],
        "video_source_frames": [i["frames"] for i in info.values()],
        "video_frames": [len(r["video_frame_indices"]) for r in vids],
        "video_tokens": [r["num_video_tokens"] for r in vids],
    }.items():
        q = o[metric]["quantiles"]
        assert (q["n"], q["min"], q["max"]) == (3, min(values), max(values)), metric
        assert q["mean"] == pytest.approx(np.mean(values), rel=1e-4) and o[metric]["unit"] == "video"
    assert {b["lo"]: b["count"] for b in o["video_frames"]["bins"]} == {5: 1, 8: 2}
    assert rep["sources"][0]["distributions"]["video_tokens"]["quantiles"]["n"] == 3
    html = (video_build / "report.html").read_text()
    assert '<a href="#videos">Videos</a>' in html and '<section id="videos"><h2>Videos</h2>' in html
    section = html[html.index('<section id="videos">'):html.index("</section>", html.index('<section id="videos">'))]
    assert "video_missing" in section and "a video file does not exist under the video root" in section
    assert "source clip duration (s)" in section and "frames sampled per clip" in section
    assert section.count("<img ") == 7  # duration, frame rate, sizes, source frames, sampled, tokens, refusals
    # `parsit-data report` redraws it from the part files alone: the same bytes.
    from parsit_data.report import regenerate

    before = (video_build / "report.json").read_bytes(), html
    regenerate(video_build)
    assert ((video_build / "report.json").read_bytes(), (video_build / "report.html").read_text()) == before


def test_inspect_shows_the_sampled_frames_of_a_video_row(video_build, capsys):
    from parsit_data.cli.main import main
    from parsit_data.rowview import load_row

    n, fps, (w, h), _ = CLIPS["a.mp4"]
    want = np.linspace(0, n - 1, FRAMES, dtype=int).tolist()  # LLaVA-NeXT's uniform rule
    view = load_row(video_build, sample_id="v-a.mp4")
    assert [i for i, _ in view.video["frames"]] == want
    assert [t for _, t in view.video["frames"]] == pytest.approx([i / fps for i in want], abs=1e-3)
    assert view.video["stored"] == (384, 384) and view.video["tokens"] == FRAMES * PER_FRAME + 1
    assert [p.kind for p in view.pieces].count("video") == 1
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(video_build), "--id", "v-a.mp4", "--ids"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert f"a.mp4 {w}x{h}, {n / fps:.2f} s at {fps} frames/s, {n} frames; {FRAMES} sampled, stored at 384x384, " \
           f"{FRAMES * PER_FRAME + 1} video tokens" in text
    assert " ".join(f"#{i} {i / fps:.2f}s" for i in want) in text
    assert f"<video: {FRAMES} frames, {FRAMES * PER_FRAME + 1} visual tokens>" in text
    assert f"+ 0 image + {FRAMES * PER_FRAME + 1} video tokens" in text and "'<video>'" not in text
    # A row without video shows no video lines.
    assert load_row(video_build, sample_id="text").video is None


@pytest.mark.timeout(300)
def test_video_report_renders_in_a_browser(video_build, tmp_path):
    from parsit_data.report.html import sections
    from test_report_browser import PROBE, _Dom, run_chromium

    html = (video_build / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = _Dom()
    dom.feed(run_chromium("--virtual-time-budget=15000", "--dump-dom", probed.as_uri()).stdout)
    assert dom.body.get("data-probed") == "yes"
    assert dom.h2 == [title for _, title in sections(False, video=True)] and "Videos" in dom.h2
    videos = [img for img in dom.imgs if img.get("alt") in ("video sizes", "videos refused by reason")
              or img.get("alt", "").startswith(("source clip", "source frame", "frames ", "video tokens"))]
    assert len(videos) == 7
    for img in videos:  # each video plot decodes and is laid out at a visible size
        assert int(img["data-nw"]) > 100 and int(img["data-nh"]) > 50 and int(img["data-cw"]) > 100, img.get("alt")
