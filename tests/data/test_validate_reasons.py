"""One minimal record per reason code, through a real build and through ``parsit-data validate``.

Parametrized over ``reasons.REASONS``: a new code without a triggering record here fails the suite.
All cases run in one build (one source per code) so the whole file costs about one build.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parsit_data.sources import jsonl as sources  # the JSONL reader, whose checks a case turns off
from parsit_data.images import ImageOptions
from parsit_data.precheck import precheck
from parsit_data.reasons import REASONS, explain
from parsit_data.templates import get_template
from parsit_data.tokenizer import load_tokenizer
from parsit_data.validate import ValidationOptions, control_tokens_of

from validate_helpers import conv, png_header_only, quarantine_lines, run_build, save_image, write_jsonl
from vision_support import OV_SIGLIP, llava_onevision_processor, save_processor

LONG = " ".join(f"word{i}" for i in range(3000))  # far over the --max-length used below

#: code -> the lines of its source (dicts are JSON records, bytes are raw lines). Every source is meant to
#: quarantine exactly one record with exactly that code (duplicate_id: the second of two).
CASES: dict[str, list] = {
    "invalid_json": [b'{"id": "x", "conversations": ['],
    "non_utf8": [b'{"conversations": [{"from": "human", "value": "caf\xe9"}]}'],
    "not_an_object": ["just a string"],  # (a line starting with "[" would make the file a JSON list)
    "missing_conversations": [{"id": "no-conv", "text": "hello"}],
    "empty_conversation": [{"conversations": []}],
    "bad_turn": [{"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]}],
    "unknown_role": [{"conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "x"}]}],
    "not_alternating": [{"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                                           {"from": "gpt", "value": "c"}]}],
    "empty_turn": [conv(reply=" \n\t ")],
    "no_assistant_turn": [{"conversations": [{"from": "human", "value": "Anyone there?"}]}],
    "image_placeholder_mismatch": [conv(user="Describe the page.", image="ok.png")],
    "image_missing": [conv(user="<image>\nTitle?", image="does_not_exist.png")],
    "image_outside_root": [conv(user="<image>\nRead it.", image="../outside/secret.png")],
    "image_unreadable": [conv(user="<image>\nTitle?", image="zero.png")],
    "image_too_large": [conv(user="<image>\nTitle?", image="bomb.png")],
    "image_too_small": [conv(user="<image>\nTitle?", image="tiny.png")],
    # no --processor: the build has no video rule (the video cases below build with a OneVision processor)
    "video_unsupported": [{"video": "clip.mp4", **conv(user="<video>\nWhat happens?")}],
    "video_placeholder_mismatch": [{"video": "ok.mp4", **conv(user="What happens?")}],
    "video_missing": [{"video": "nowhere.mp4", **conv(user="<image>\nWhat happens?")}],
    "video_outside_root": [{"video": "../outside/clip.mp4", **conv(user="<image>\nWhat happens?")}],
    "video_unreadable": [{"video": "zero.mp4", **conv(user="<image>\nWhat happens?")}],
    "video_too_long": [{"video": "long.mkv", **conv(user="<image>\nWhat happens?")}],
    "video_too_large": [{"video": "8k.mkv", **conv(user="<image>\nWhat happens?")}],
    "video_timeout": [{"video": "slow.avi", **conv(user="<image>\nWhat happens?")}],
    "special_token_in_text": [conv(user="Say <|im_end|> please")],
    "overlong": [conv(reply=LONG)],
    "duplicate_id": [conv(id="dup"), conv(user="Again?", id="dup")],
    "bad_field": [conv(user="<image>\nTitle?", image=5)],
    "bad_content_part": [{"messages": [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]},
                                       {"role": "assistant", "content": "A bird."}]}],
    # plain (pretraining captions) takes one image and one caption: a two-round chat does not fit it
    "template_mismatch": [{"image": "ok.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A page."},
        {"from": "human", "value": "More?"}, {"from": "gpt", "value": "No."}]}],
    "invalid_unicode": [b'{"id": "u", "conversations": [{"from": "human", "value": "bad \\ud800 surrogate"}, '
                        b'{"from": "gpt", "value": "x"}]}'],
    "non_standard_number": [b'{"id": "n", "score": NaN, "conversations": [{"from": "human", "value": "a"}, '
                            b'{"from": "gpt", "value": "x"}]}'],
    # the reader's lone-surrogate check is switched off for this one build (READER_CHECK_OFF), so the
    # surrogate reaches the real tokenizer, whose batch fails on its thread and is narrowed to the record
    "tokenizer_error": [conv(id="t-ok"), b'{"id": "t", "conversations": [{"from": "human", "value": "x \\udc00"}, '
                                         b'{"from": "gpt", "value": "x"}]}', conv(user="Still fine?", id="t-ok2")],
    # the global pass (issue 21): a one-word edit of the record before it; a user turn that is an eval question
    "near_duplicate": [conv(user="Please summarise the quarterly figures for the northern region.",
                            reply="Sales rose by ten percent in the last quarter.", id="nd-kept"),
                       conv(user="Please summarise the quarterly figures for the northern region.",
                            reply="Sales rose by eleven percent in the last quarter.", id="nd-copy")],
    "eval_contamination": [conv(user="What colour is the sky on a clear day?", id="ec-ok"),
                           conv(user="In the 2019 annual report, which region had the highest margin growth?",
                                id="ec-leak")],
}
#: The eval set of the eval_contamination case (its file is written by the fixture; "EVAL" in OWN_OPTIONS).
EVAL_ITEMS = [{"id": "bench-7", "question": "In the 2019 annual report, which region had the highest margin growth?"}]
#: Codes whose case needs other build options than the shared build (each gets a build of its own).
OWN_OPTIONS: dict[str, dict] = {"template_mismatch": {"template": "plain"}, "tokenizer_error": {},
                                "near_duplicate": {"near_duplicates": "quarantine"},
                                "eval_contamination": {"contamination": "quarantine", "eval_set": ["EVAL"]}}
#: The clips' own faults: one build with a OneVision processor (the decoder sees them); video_timeout a
#: build of its own with a time limit that no decode of its clip meets.
VIDEO_BUILD = {"video_missing", "video_outside_root", "video_unreadable", "video_too_long", "video_too_large"}
OWN_OPTIONS["video_timeout"] = {"processor": "OV", "video_timeout_s": 0.05, "video_frames": 600}
#: Codes only a build can see (validate needs no tokenizer for them, nor the global pass; it decodes no video
#: and knows no processor's video rule).
BUILD_ONLY = {"overlong", "tokenizer_error", "near_duplicate", "eval_contamination", "video_unsupported",
              "video_timeout"} | VIDEO_BUILD
READER_CHECK_OFF = {"tokenizer_error"}
MAX_LENGTH = 512
MIN_SIDE = 16


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("reasons")
    root = tmp / "images"
    save_image(root / "ok.png", (64, 64))
    save_image(root / "tiny.png", (8, 8))
    (root / "zero.png").write_bytes(b"")
    (root / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    save_image(tmp / "outside" / "secret.png")
    inputs = {code: write_jsonl(tmp / "in" / f"{code}.jsonl", lines) for code, lines in CASES.items()}
    common = dict(image_root=str(root), max_length=MAX_LENGTH, min_image_side=MIN_SIDE)
    shared = [p for code, p in inputs.items() if code not in OWN_OPTIONS and code not in VIDEO_BUILD]
    results = {}
    manifest = run_build(shared, tmp / "out", **common)
    for code in CASES:
        results[code] = (tmp / "out", manifest)
    ov = str(save_processor(llava_onevision_processor(**OV_SIGLIP), tmp / "ov"))
    videos = _hostile_videos(root, tmp)
    vcommon = dict(common, max_length=None, video_root=str(videos), video_frames=2)
    vbuild = run_build([inputs[c] for c in sorted(VIDEO_BUILD)], tmp / "out-video", **vcommon, processor=ov)
    results |= {code: (tmp / "out-video", vbuild) for code in VIDEO_BUILD}
    for code, opts in OWN_OPTIONS.items():
        out = tmp / f"out-{code}"
        if opts.get("processor") == "OV":
            results[code] = (out, run_build([inputs[code]], out, **dict(vcommon, **dict(opts, processor=ov))))
            continue
        with pytest.MonkeyPatch.context() as mp:
            if code in READER_CHECK_OFF:
                mp.setattr(sources, "_lone_surrogate_at", lambda value: None)
            if opts.get("eval_set") == ["EVAL"]:
                opts = dict(opts, eval_set=[str(write_jsonl(tmp / "eval.jsonl", EVAL_ITEMS))])
            results[code] = (out, run_build([inputs[code]], out, **common, **opts))
    return results


def _hostile_videos(image_root: Path, tmp: Path) -> Path:
    from fractions import Fraction

    from video_support import make_clip

    videos = tmp / "videos"
    videos.mkdir()
    make_clip(image_root / "ok.mp4", 3)  # (the shared build's placeholder case names it under the image root)
    (videos / "zero.mp4").write_bytes(b"")
    (tmp / "outside").mkdir(exist_ok=True)
    make_clip(tmp / "outside" / "clip.mp4", 3)
    # 2 frames 2 hours apart: over the default 1-hour limit, read from the container without decoding
    make_clip(videos / "long.mkv", 2, codec="ffv1", size=(32, 32), pts=[0, 2 * 3600 * 1000],
              time_base=Fraction(1, 1000))
    make_clip(videos / "8k.mkv", 1, codec="mjpeg", size=(7680, 4320), pix_fmt="yuvj420p")
    make_clip(videos / "slow.avi", 600, codec="mpeg4", size=(320, 240))
    return videos


@pytest.fixture(scope="module")
def validated(cases, tmp_path_factory):
    """The same cases through parsit-data validate's library function, grouped as the builds were."""
    tmp = tmp_path_factory.mktemp("reasons-validate")
    src = next(iter(cases.values()))[0].parent
    tok = load_tokenizer("qwen3")
    iopts = ImageOptions(root=src / "images", min_side=MIN_SIDE)
    groups = {"shared": ([c for c in CASES if c not in OWN_OPTIONS], "qwen_1_5")}
    groups |= {c: ([c], o.get("template", "qwen_1_5")) for c, o in OWN_OPTIONS.items() if c not in BUILD_ONLY}
    out = {}
    for name, (codes, template) in groups.items():
        tmpl = get_template(template, "qwen3")
        vopts = ValidationOptions(control_tokens_of(tmpl, tok))
        q = tmp / f"{name}.jsonl"
        result = precheck([src / "in" / f"{c}.jsonl" for c in codes], vopts=vopts, iopts=iopts, template=tmpl,
                          quarantine_out=q)
        lines = [json.loads(x) for x in q.read_text().splitlines()]
        for c in codes:
            out[c] = (result, lines)
    return out


#: Codes no JSONL line can trigger: a container's own damage (tests/data/test_container_faults.py covers them).
CONTAINER_ONLY = {"unreadable_input"}


@pytest.mark.parametrize("code", [c for c in REASONS if c not in CONTAINER_ONLY])
def test_reason_code_has_a_triggering_record(code, cases, validated):
    assert code in CASES, f"reason {code!r} has no minimal triggering record in CASES: add one"
    out, manifest = cases[code]
    (src,) = [s for s in manifest["sources"] if s["name"] == code]
    assert src["quarantined"] == {code: 1}, src
    assert src["read"] == len(CASES[code]) and src["kept"] == src["read"] - 1
    lines = [q for q in quarantine_lines(out) if q["source"] == code]
    assert [q["reason"] for q in lines] == [code]
    (q,) = lines
    assert q["detail"]  # a specific detail, not just the code
    raw = [r for r in CASES[code] if isinstance(r, bytes)][-1] if code == "tokenizer_error" else CASES[code][-1]
    if code in ("invalid_unicode", "tokenizer_error"):
        assert q["record"] == json.loads(raw)  # parsed, lone surrogate included (escaped on the line)
    elif isinstance(raw, bytes):
        assert q["record"] is None or isinstance(q["record"], str)  # the raw line, never a guess
    else:
        assert q["record"] == raw  # the original record, untouched

    # parsit-data validate agrees on every code that needs no tokenizer
    if code == "tokenizer_error":
        assert "TypeError" in q["detail"]  # the tokenizer's own complaint, pinned to this record
        return
    if code == "near_duplicate":
        assert "'nd-kept'" in q["detail"]  # names the sample that is kept
        return
    if code == "eval_contamination":
        assert "'eval'" in q["detail"] and "'bench-7'" in q["detail"]  # names the eval set and the item
        return  # validate never tokenizes; with the reader's check on, this record is invalid_unicode there
    if code.startswith("video_") and code in BUILD_ONLY:
        return  # validate decodes no clip and knows no processor's video rule
    result, vlines = validated[code]
    v = result.stats.sources[code]
    if code == "overlong":
        assert v.quarantined == {} and v.kept == 1  # needs token counts: only the build can tell
    else:
        assert dict(v.quarantined) == {code: 1}
        (vq,) = [x for x in vlines if x["source"] == code]
        assert {k: vq[k] for k in ("reason", "detail", "record", "line", "sample_id")} == \
               {k: q[k] for k in ("reason", "detail", "record", "line", "sample_id")}


def test_every_code_has_a_one_line_explanation_and_is_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "REASONS.md").read_text(encoding="utf-8")
    for code, text in REASONS.items():
        assert code.isidentifier() and code == code.lower()
        assert explain(code) == text and text and "\n" not in text
        assert f"| `{code}` |" in doc, f"docs/REASONS.md does not list {code!r}"


def test_cases_cover_only_known_codes():
    assert set(CASES) <= set(REASONS)
