"""Shards read back with pyarrow: ids and labels against hand-written expectations (real Qwen3 tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from parsit_data.build import build
from parsit_data.config import BuildConfig
from parsit_data.format import read_shard

M = -100  # IGNORE_INDEX
SYS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]  # <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n


def _build(tmp_path: Path, records: list[dict], **kw) -> list[dict]:
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    m = build(BuildConfig(inputs=[str(src)], out=str(tmp_path / "out"), **kw))
    rows = []
    for s in m.shards:
        rows += read_shard(tmp_path / "out" / s.path).to_pylist()
    return rows


def test_worked_example_from_design_notes(tmp_path):
    Image.new("RGB", (500, 300), (10, 20, 30)).save(tmp_path / "page.png")
    rows = _build(tmp_path, [{"id": "ex", "image": "page.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is the title?"}, {"from": "gpt", "value": "Annual Report 2023."}]}],
        image_root=str(tmp_path))
    (row,) = rows
    assert row["input_ids"] == [
        151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, -200, 198, 3838, 374,
        279, 2265, 30, 151645, 198, 151644, 77091, 198, 80496, 8259, 220, 17, 15, 17, 18, 13, 151645, 198]
    assert row["labels"] == [M] * 26 + [80496, 8259, 220, 17, 15, 17, 18, 13, 151645] + [M]
    # SigLIP so400m-patch14-384, aspect pad: (384 // 14)^2 = 729 visual tokens replace the one placeholder.
    assert row["num_image_tokens"] == [729]
    assert row["length"] == 36 - 1 + 729
    assert row["image_sizes"] == [{"width": 500, "height": 300}]
    assert row["images"][0] == (tmp_path / "page.png").read_bytes()  # original bytes embedded
    assert row["supervised_tokens"] == 9


def test_text_only_multi_round_role_content_spelling(tmp_path):
    rows = _build(tmp_path, [{"conversations": [
        {"role": "user", "content": "Spell the number 7 in words."}, {"role": "assistant", "content": "seven."},
        {"role": "user", "content": "And 14?"}, {"role": "assistant", "content": "fourteen."}]}])
    (row,) = rows
    user1 = [151644, 872, 198, 29028, 279, 1372, 220, 22, 304, 4244, 13, 151645, 198]
    asst1 = [151644, 77091, 198, 80185, 13, 151645, 198]
    user2 = [151644, 872, 198, 3036, 220, 16, 19, 30, 151645, 198]
    asst2 = [151644, 77091, 198, 34024, 14901, 13, 151645, 198]
    assert row["input_ids"] == SYS + user1 + asst1 + user2 + asst2
    assert row["labels"] == ([M] * (11 + 13 + 3) + [80185, 13, 151645, M]
                             + [M] * (10 + 3) + [34024, 14901, 13, 151645, M])
    assert row["sample_id"] == "data:1"  # no id: source name and line
    assert row["num_image_tokens"] == [] and row["images"] == []
    assert row["length"] == len(row["input_ids"])


def test_reply_starting_with_newline_is_tokenized_on_its_own(tmp_path):
    rows = _build(tmp_path, [{"id": "nl", "conversations": [
        {"from": "human", "value": "Spell the number 7 in words."}, {"from": "gpt", "value": "\nRoses are red."}]}])
    (row,) = rows
    # "assistant\n" + "\nRoses are red." as inference produces it: the header's newline (198) and the
    # reply's own leading newline (198) stay apart; encoding the joined text would give 271 ("\n\n").
    tail = [151644, 77091, 198, 198, 49, 19696, 525, 2518, 13, 151645, 198]
    assert row["input_ids"][-len(tail):] == tail
    assert row["labels"][-len(tail):] == [M, M, M, 198, 49, 19696, 525, 2518, 13, 151645, M]


def test_own_system_turn_replaces_default_and_unanswered_user_turn_is_kept(tmp_path):
    rows = _build(tmp_path, [{"id": "s", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "And 14?"},
        {"from": "gpt", "value": "fourteen."}, {"from": "human", "value": "And 14?"}]}])
    (row,) = rows
    ids, labels = row["input_ids"], row["labels"]
    assert ids[:2] == [151644, 8948] and 2610 not in ids[:8]  # not the default prompt
    assert ids[-10:] == [151644, 872, 198, 3036, 220, 16, 19, 30, 151645, 198]
    assert labels[-10:] == [M] * 10  # the unanswered user turn is not supervised
    assert [x for x in labels if x != M] == [34024, 14901, 13, 151645]


def test_qwen3_template_has_no_default_system_prompt(tmp_path):
    rows = _build(tmp_path, [{"conversations": [
        {"from": "human", "value": "And 14?"}, {"from": "gpt", "value": "fourteen."}]}], template="qwen3")
    assert rows[0]["input_ids"][:3] == [151644, 872, 198]


@pytest.mark.parametrize("aspect,expected", [("pad", 729), ("square", 729), ("anyres", 2214)])
def test_visual_token_count_follows_geometry(tmp_path, aspect, expected):
    Image.new("RGB", (800, 400), (1, 2, 3)).save(tmp_path / "wide.png")
    rows = _build(tmp_path, [{"image": "wide.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "wide"}]}],
        image_root=str(tmp_path), aspect=aspect)
    # anyres (LLaVA-NeXT's rule, SigLIP-384, strategy full): 800x400 best fits the (384, 768) pinpoint, a 1x2 grid
    # of 27x27-patch crops = 27 x 54 patches, nothing to unpad (same 2:1 aspect); + one newline per row (27)
    # + the base crop (729): 1458 + 27 + 729. The old rule said (2 + 1) x 729, which no model produces.
    assert rows[0]["num_image_tokens"] == [expected]


def test_image_max_side_reencodes_but_keeps_original_size(tmp_path):
    Image.new("RGB", (1000, 500), (200, 100, 50)).save(tmp_path / "big.png")
    rows = _build(tmp_path, [{"image": "big.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "big"}]}],
        image_root=str(tmp_path), image_max_side=200)
    import io

    im = Image.open(io.BytesIO(rows[0]["images"][0]))
    assert im.size == (200, 100)
    assert rows[0]["image_sizes"] == [{"width": 1000, "height": 500}]


def test_overlong_dropped_or_truncated_at_turn_boundary(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    rec = {"id": "long", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nfirst"}, {"from": "gpt", "value": "one"},
        {"from": "human", "value": "second " * 50}, {"from": "gpt", "value": "two"}]}
    dropped = _build(tmp_path / "d", [rec], image_root=str(tmp_path), max_length=760) if (tmp_path / "d").mkdir() is None else None
    assert dropped == []
    q = [json.loads(x) for x in (tmp_path / "d" / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert [x["reason"] for x in q] == ["overlong"]
    (tmp_path / "t").mkdir()
    (row,) = _build(tmp_path / "t", [rec], image_root=str(tmp_path), max_length=760, overlong="truncate")
    assert row["truncated"] is True
    assert row["length"] <= 760
    assert row["input_ids"].count(-200) == 1  # the image survives whole
    assert [x for x in row["labels"] if x != M][-1] == 151645  # ends on a complete reply
    assert row["input_ids"][-2:] == [151645, 198]
