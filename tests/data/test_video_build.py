"""Video records through the build: every spelling, the sampled frames in the shard, exact token counts.

Clips are made here (video_support.py: each frame carries its index in its pixels), the processor folder
is a real LlavaOnevisionProcessor's (vision_support.py); the counts are checked against transformers'
``_get_num_multimodal_tokens(video_sizes=...)``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from parsit_data.build import build
from parsit_data.config import BuildConfig
from parsit_data.format import (IGNORE_INDEX, SHARD_SCHEMA, VIDEO_COLUMNS, VIDEO_TOKEN_INDEX, load_manifest,
                                read_shard)
from parsit_data.video import onevision_video_tokens, sample_indices
from video_support import make_clip, read_index
from vision_support import OV_SIGLIP, llava_next_processor, llava_onevision_processor, save_processor, NEXT_CLIP

pytest.importorskip("av")


@pytest.fixture(scope="module")
def ov_proc():
    return llava_onevision_processor(**OV_SIGLIP)


@pytest.fixture(scope="module")
def ov_dir(tmp_path_factory, ov_proc) -> Path:
    return save_processor(ov_proc, tmp_path_factory.mktemp("ov") / "proc")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    make_clip(root / "a.mp4", 40, size=(160, 96))
    make_clip(root / "b.webm", 5, codec="libvpx-vp9", size=(98, 66))
    make_clip(root / "c.avi", 305, codec="mpeg4", size=(64, 48))
    make_clip(root / "odd.mkv", 1, codec="ffv1", size=(67, 35))  # one frame, odd sizes
    Image.new("RGB", (64, 64), "blue").save(root / "img.png")
    return root


def _build(tmp_path: Path, records: list[dict], root: Path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out"
    m = build(BuildConfig(inputs=[str(src)], out=str(out), image_root=str(root), near_duplicates="off", **kw))
    rows = [r for s in m.shards for r in read_shard(out / s.path).to_pylist()]
    q = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    return m, rows, q


def _conv(text="<image>\nWhat happens?"):
    return [{"from": "human", "value": text}, {"from": "gpt", "value": "A counter goes up."}]


def stored(row) -> list[int]:
    return [read_index(np.asarray(Image.open(io.BytesIO(f)).convert("RGB"))) for f in row["video_frames"]]


def test_every_spelling_builds_a_row_with_the_sampled_frames_and_exact_tokens(tmp_path, ov_dir, ov_proc, clips):
    records = [
        {"id": "llava", "video": "a.mp4", "conversations": _conv()},  # LLaVA-Video: <image> for the video
        {"id": "hf", "video": "b.webm", "conversations": _conv("<video>\nWhat happens?")},
        {"id": "parts", "videos": ["c.avi"], "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]},
            {"role": "assistant", "content": "A counter goes up."}]},
        {"id": "part_ref", "messages": [
            {"role": "user", "content": [{"type": "video", "video": "a.mp4"}, {"type": "text", "text": "Why?"}]},
            {"role": "assistant", "content": "Because."}]},
        {"id": "both", "image": "img.png", "video": "a.mp4",
         "conversations": _conv("<image>\n<video>\nCompare.")},
        {"id": "text", "conversations": _conv("Just text.")},
        {"id": "odd", "video": "odd.mkv", "conversations": _conv()},
    ]
    m, rows, q = _build(tmp_path, records, clips, processor=str(ov_dir), video_frames=8)
    assert q == []
    by = {r["sample_id"]: r for r in rows}
    totals = {"llava": 40, "hf": 5, "parts": 305, "part_ref": 40, "both": 40, "odd": 1}
    ref = ov_proc._get_num_multimodal_tokens(video_sizes=[(n, 384, 384) for n in (8, 5)])["num_video_tokens"]
    assert ref == [8 * 196 + 1, 5 * 196 + 1]
    for sid, total in totals.items():
        r = by[sid]
        want = sample_indices(total, 25.0, 8)
        assert r["video_frame_indices"] == want
        assert stored(r) == want  # the pixels say which frames they are
        assert r["video_frame_times"] == pytest.approx([i / 25 for i in want], abs=1e-3)
        assert r["num_video_tokens"] == onevision_video_tokens(len(want), 729) == len(want) * 196 + 1
        assert r["input_ids"].count(VIDEO_TOKEN_INDEX) == 1
        assert r["labels"][r["input_ids"].index(VIDEO_TOKEN_INDEX)] == IGNORE_INDEX
        n_img = r["input_ids"].count(-200)
        assert r["length"] == len(r["input_ids"]) - n_img - 1 + sum(r["num_image_tokens"]) + r["num_video_tokens"]
        assert r["video_info"]["frames"] == total and r["video_info"]["fps"] == pytest.approx(25.0)
        assert all(Image.open(io.BytesIO(f)).size == (384, 384) for f in r["video_frames"])
    assert by["hf"]["num_video_tokens"] == ref[1] and by["llava"]["num_video_tokens"] == ref[0]
    assert by["both"]["num_image_tokens"] and by["both"]["images"]
    assert by["llava"]["video_path"] == "a.mp4" and by["llava"]["video_info"]["width"] == 160
    assert (by["odd"]["video_info"]["width"], by["odd"]["video_info"]["height"]) == (67, 35)
    assert by["odd"]["num_video_tokens"] == 197
    t = by["text"]
    assert (t["video_path"], t["video_frames"], t["video_info"], t["num_video_tokens"]) == (None, [], None, 0)
    assert m.format_version == 3 and m.video is not None
    assert m.video.size == {"height": 384, "width": 384} and m.video.frames == 8 and m.video.tokens_per_frame == 196
    assert m.video.video_processor_source == "class defaults"
    assert m.video.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert load_manifest(tmp_path / "out").video == m.video


def test_without_a_video_capable_processor_video_records_are_quarantined_saying_so(tmp_path, clips):
    next_dir = save_processor(llava_next_processor(**NEXT_CLIP), tmp_path / "next")
    records = [{"id": "v", "video": "a.mp4", "conversations": _conv()}, {"id": "t", "conversations": _conv("Hi.")}]
    for kw in ({}, {"processor": str(next_dir)}):
        m, rows, q = _build(tmp_path / str(len(kw)), records, clips, **kw)
        assert [r["sample_id"] for r in rows] == ["t"] and m.video is None
        assert [x["reason"] for x in q] == ["video_unsupported"] and "--processor" in q[0]["detail"]


def test_max_length_counts_the_video_and_never_cuts_it(tmp_path, ov_dir, clips):
    long = {"id": "v", "video": "a.mp4", "conversations": _conv() + [
        {"from": "human", "value": "More?"}, {"from": "gpt", "value": "No."}]}
    m, rows, q = _build(tmp_path / "drop", [long], clips, processor=str(ov_dir), video_frames=4, max_length=4 * 196)
    assert rows == [] and [x["reason"] for x in q] == ["overlong"]
    m, rows, q = _build(tmp_path / "fit", [long], clips, processor=str(ov_dir), video_frames=4, max_length=4 * 196 + 60)
    assert q == [] and rows[0]["length"] <= 4 * 196 + 60 and rows[0]["num_video_tokens"] == 4 * 196 + 1


def test_video_placeholder_mismatches_are_quarantined(tmp_path, ov_dir, clips):
    records = [
        {"id": "none", "video": "a.mp4", "conversations": _conv("No placeholder.")},
        {"id": "two", "video": "a.mp4", "conversations": _conv("<video><video>Two.")},
        {"id": "stray", "conversations": _conv("<video>\nNo video.")},
        {"id": "two_videos", "videos": ["a.mp4", "b.webm"], "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "video"}]},
            {"role": "assistant", "content": "x"}]},
    ]
    m, rows, q = _build(tmp_path, records, clips, processor=str(ov_dir), video_frames=4)
    assert rows == []
    assert {x["sample_id"]: x["reason"] for x in q} == {
        "none": "video_placeholder_mismatch", "two": "video_placeholder_mismatch",
        "stray": "video_placeholder_mismatch", "two_videos": "video_unsupported"}


def test_a_format_2_shard_reads_as_rows_without_video(demo_build, tmp_path):
    from parsit_data.format import map_shard

    old_fields = [f for f in SHARD_SCHEMA if f.name not in VIDEO_COLUMNS]
    table = map_shard(next((demo_build / "shards").glob("*.arrow"))).table().select([f.name for f in old_fields])
    old = pa.schema(old_fields, metadata={b"parsit.format_version": b"2"})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, old) as w:
        w.write_table(table.cast(old))
    (tmp_path / "v2.arrow").write_bytes(sink.getvalue().to_pybytes())
    got = read_shard(tmp_path / "v2.arrow")
    assert got.schema.names == SHARD_SCHEMA.names and got.num_rows == table.num_rows
    row = got.slice(0, 1).to_pylist()[0]
    assert (row["video_path"], row["video_frames"], row["video_frame_indices"], row["video_info"],
            row["num_video_tokens"]) == (None, [], [], None, 0)
    assert got.select(table.column_names).equals(table)


def test_parquet_with_a_video_path_column_and_the_cli_flags(tmp_path, ov_dir, clips):
    import pyarrow.parquet as pq

    from parsit_data.cli.main import main

    table = pa.table({"id": ["p0", "p1"], "video": ["a.mp4", "c.avi"],
                      "conversations": [_conv(), _conv("<video>\nAnd now?")]})
    pq.write_table(table, tmp_path / "data.parquet")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["build", str(tmp_path / "data.parquet"), "--out", str(out), "--processor", str(ov_dir),
              "--video-root", str(clips), "--video-frames", "16", "--video-fps", "2", "--video-max-side", "100",
              "--near-duplicates", "off", "--quiet"])
    assert exc.value.code in (0, None)
    m = load_manifest(out)
    rows = [r for s in m.shards for r in read_shard(out / s.path).to_pylist()]
    assert [r["sample_id"] for r in rows] == ["p0", "p1"]
    # 2 fps of a 25 fps clip: every 12th frame (40 frames -> 0,12,24,36); 305 frames give 26 > 16: 16 uniform
    assert rows[0]["video_frame_indices"] == [0, 12, 24, 36] and stored(rows[0]) == [0, 12, 24, 36]
    assert rows[1]["video_frame_indices"] == sample_indices(305, 25.0, 16)
    assert Image.open(io.BytesIO(rows[0]["video_frames"][0])).size == (100, 60)  # 160x96 at max side 100
    assert rows[1]["num_video_tokens"] == 16 * 196 + 1
    assert (m.video.frames, m.video.fps, m.video.max_side) == (16, 2.0, 100)


def test_time_instruction_is_llava_video_s_sentence_from_the_stored_times(tmp_path, ov_dir, clips, qwen):
    from parsit_data.decode import decode_ids

    records = [{"id": "v", "video": "a.mp4", "conversations": _conv("What happens?\n<image>")}]
    m, rows, q = _build(tmp_path, records, clips, processor=str(ov_dir), video_frames=3, video_time_instruction=True)
    (r,) = rows
    assert r["video_frame_indices"] == [0, 19, 39]
    text = decode_ids(qwen, r["input_ids"])
    want = ("<video>\nThe video lasts for 1.60 seconds, and 3 frames are uniformly sampled from it. These frames are "
            "located at 0.00s,0.76s,1.56s.Please answer the following questions related to this video.\n"
            "What happens?\n")
    assert f"<|im_start|>user\n{want}<|im_end|>" in text
    n_text = len(r["input_ids"]) - 1
    assert r["length"] == n_text + 3 * 196 + 1 and m.video.time_instruction is True
    _, plain, _ = _build(tmp_path / "off", records, clips, processor=str(ov_dir), video_frames=3)
    assert "The video lasts" not in decode_ids(qwen, plain[0]["input_ids"])


def test_llava_next_policy_moves_the_video_placeholder_as_upstream_moves_its_image(tmp_path, ov_dir, clips, qwen):
    from parsit_data.decode import decode_ids

    records = [{"id": "v", "video": "a.mp4", "conversations": _conv("What happens?\n<image>")}]
    m, rows, q = _build(tmp_path, records, clips, processor=str(ov_dir), video_frames=2, label_policy="llava-next")
    text = decode_ids(qwen, rows[0]["input_ids"])
    # preprocess_multimodal: the one placeholder moved to the start, "\n", the rest stripped
    assert "<|im_start|>user\n<video>\nWhat happens?<|im_end|>" in text


def test_the_folder_s_video_processor_config_decides_the_stored_frames_and_the_manifest(tmp_path, ov_dir, clips):
    import shutil

    folder = tmp_path / "ov-video"
    shutil.copytree(ov_dir, folder)
    (folder / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": 224, "width": 320},
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 2}))
    records = [{"id": "v", "video": "a.mp4", "conversations": _conv()}]
    m, rows, q = _build(tmp_path, records, clips, processor=str(folder), video_frames=2)
    assert all(Image.open(io.BytesIO(f)).size == (320, 224) for f in rows[0]["video_frames"])
    assert (m.video.size, m.video.image_mean, m.video.image_std, m.video.resample) == (
        {"height": 224, "width": 320}, [0.5] * 3, [0.25] * 3, "bilinear")
    assert m.video.video_processor_source == "video_preprocessor_config.json"
    assert m.video.video_processor["size"] == {"height": 224, "width": 320}
    # another video config at the same path is another build (its configs are fingerprinted)
    _, rows2, _ = _build(tmp_path / "again", records, clips, processor=str(ov_dir), video_frames=2)
    assert load_manifest(tmp_path / "out").config_hash != load_manifest(tmp_path / "again" / "out").config_hash


def test_near_duplicates_tell_videos_apart_that_share_their_text(tmp_path, ov_dir, clips):
    same_text = _conv()
    records = [{"id": "a", "video": "a.mp4", "conversations": same_text},
               {"id": "c", "video": "c.avi", "conversations": same_text},
               {"id": "a-again", "video": "a.mp4", "conversations": same_text}]
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out"
    m = build(BuildConfig(inputs=[str(src)], out=str(out), image_root=str(clips), processor=str(ov_dir),
                          video_frames=4, near_duplicates="quarantine"))
    rows = [r["sample_id"] for s in m.shards for r in read_shard(out / s.path).to_pylist()]
    q = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert rows == ["a", "c"]
    assert [(x["sample_id"], x["reason"]) for x in q] == [("a-again", "near_duplicate")]


def test_truncation_cuts_at_a_turn_boundary_and_keeps_or_drops_the_whole_video(tmp_path, ov_dir, clips):
    long_reply = " ".join(f"word{i}" for i in range(400))
    first = {"id": "first", "video": "a.mp4", "conversations": _conv() + [
        {"from": "human", "value": "And then?"}, {"from": "gpt", "value": long_reply}]}
    later = {"id": "later", "video": "a.mp4", "conversations": [
        {"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": long_reply}]}
    m, rows, q = _build(tmp_path, [first, later], clips, processor=str(ov_dir), video_frames=2,
                        max_length=2 * 196 + 1 + 60, overlong="truncate")
    by = {r["sample_id"]: r for r in rows}
    assert q == [] and by["first"]["truncated"] and by["later"]["truncated"]
    f = by["first"]  # cut after the first reply: the video stays whole
    assert f["num_video_tokens"] == 2 * 196 + 1 and f["input_ids"].count(VIDEO_TOKEN_INDEX) == 1
    assert f["length"] == len(f["input_ids"]) - 1 + 2 * 196 + 1 <= 2 * 196 + 1 + 60
    lt = by["later"]  # cut before the video's turn: the row has no video left
    assert VIDEO_TOKEN_INDEX not in lt["input_ids"]
    assert (lt["video_path"], lt["video_frames"], lt["num_video_tokens"]) == (None, [], 0)
    assert lt["length"] == len(lt["input_ids"])


def test_a_video_path_reads_the_same_from_jsonl_a_webdataset_tar_and_a_save_to_disk_folder(tmp_path, ov_dir, clips):
    """The video is a path field of the record in every container: the same records as JSONL, as
    WebDataset samples (key.json) and as a ``datasets.save_to_disk`` folder build to identical rows."""
    import tarfile

    import datasets

    recs = [{"id": f"w{i}", "video": name, "conversations": _conv()} for i, name in enumerate(["a.mp4", "c.avi"])]
    recs.append({"id": "w2", "conversations": _conv("What is two and two?")})
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    (tmp_path / "wds").mkdir()
    with tarfile.open(tmp_path / "wds" / "shard-000.tar", "w") as tf:
        for r in recs:
            data = json.dumps(r).encode()
            info = tarfile.TarInfo(f"{r['id']}.json")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    datasets.Dataset.from_list([{**r, "video": r.get("video")} for r in recs]).save_to_disk(str(tmp_path / "saved"))

    def rows_of(src: str, name: str) -> list[dict]:
        out = tmp_path / f"out-{name}"
        m = build(BuildConfig(inputs=[src], out=str(out), video_root=str(clips), processor=str(ov_dir),
                              video_frames=6, near_duplicates="off"))
        assert m.totals.quarantined == 0, (out / "quarantine.jsonl").read_text()[:400]
        keep = ("sample_id", "input_ids", "labels", "length", "num_video_tokens", "video_path", "video_frames",
                "video_frame_indices", "video_frame_times", "video_info")
        return [{k: r[k] for k in keep} for s in m.shards for r in read_shard(out / s.path).to_pylist()]

    ref = rows_of(str(jsonl), "jsonl")
    assert [r["num_video_tokens"] for r in ref] == [6 * 196 + 1, 6 * 196 + 1, 0]
    assert [stored(r) for r in ref[:2]] == [sample_indices(40, 25.0, 6), sample_indices(305, 25.0, 6)]
    assert rows_of(str(tmp_path / "wds"), "wds") == ref
    assert rows_of(str(tmp_path / "saved"), "saved") == ref
