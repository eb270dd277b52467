"""The report's Videos section and ``inspect`` on video rows.

The statistics under the section are checked on partition columns written by hand (merging, and that a
build without video keeps its part files and report unchanged); the section itself and ``inspect`` on a
real build of generated clips, whose durations, frame rates, sizes, sampled frames and refusals are
known clip by clip.
"""

from __future__ import annotations

import json

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
