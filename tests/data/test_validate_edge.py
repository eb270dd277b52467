"""Well-formed edge cases are kept (and trained on as the design says); details name what is wrong."""

from __future__ import annotations

import json

import pytest

from parsit_data.format import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from parsit_data.records import Reject
from parsit_data.format import read_shard
from parsit_data.validate import ValidationOptions, check_record

from validate_helpers import check_accounting, conv, run_build, save_image, write_jsonl

OPTS = ValidationOptions(frozenset({"<|im_start|>", "<|im_end|>", "<|endoftext|>"}))
LONG_OK = "Lorem ipsum dolor sit amet. " * 700  # ~20k characters, ~4k tokens: long, but under --max-length

KEPT = {
    "text-only": conv(user="Hi!", reply="Hello."),
    "leading-system": {"conversations": [{"from": "system", "value": "Be brief."},
                                         {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    "role-content": {"messages": [{"role": "user", "content": "Ping"}, {"role": "assistant", "content": "Pong"}]},
    "mixed-spellings": {"conversations": [{"role": "user", "content": "a"}, {"from": "gpt", "value": "b"}]},
    "unicode": conv(user="Übersetze 'Guten Morgen' → 日本語? 🌅 \u200b", reply="おはようございます 🌅 — ﬁn"),
    "long": conv(user="Repeat the text.", reply=LONG_OK),
    "ends-on-user": {"conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
                                       {"from": "human", "value": "Q2 (never answered)"}]},
    "two-images": conv(user="<image> and <image>: same?", reply="No.", image=["a.png", "b.jpg"]),
    "image-in-second-round": {"image": "a.png", "conversations": [
        {"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi"},
        {"from": "human", "value": "<image>\nAnd this?"}, {"from": "gpt", "value": "A square."}]},
    "extra-fields": {**conv(), "source": "sharegpt4v", "model": None, "id": 7},
    "placeholder-like-text": conv(user="Is <imag> or <Image> or < image> a placeholder?", reply="No."),
    "empty-image-list": {**conv(), "image": []},
    "big-int-id": {**conv(), "id": 2**70},
}


@pytest.fixture(scope="module")
def kept_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edge")
    save_image(tmp / "img" / "a.png", (30, 30))
    save_image(tmp / "img" / "b.jpg", (30, 20), fmt="JPEG")
    src = write_jsonl(tmp / "edge.jsonl", [{"id": k, **v} if "id" not in v else v for k, v in KEPT.items()])
    m = run_build([src], tmp / "out", image_root=str(tmp / "img"), max_length=8192)
    rows = {}
    for s in m["shards"]:
        for r in read_shard(tmp / "out" / s["path"]).to_pylist():
            rows[r["sample_id"]] = r
    return m, rows, tmp / "out"


def test_edge_cases_are_kept(kept_build):
    m, rows, out = kept_build
    assert m["sources"][0]["quarantined"] == {}, m["sources"][0]["quarantined"]
    assert m["sources"][0]["kept"] == len(KEPT)
    check_accounting(m, out)
    assert "7" in rows and str(2**70) in rows


def test_unanswered_last_user_turn_is_kept_but_not_supervised(kept_build, qwen):
    _, rows, _ = kept_build
    row = rows["ends-on-user"]
    tail = qwen.encode("<|im_start|>user\nQ2 (never answered)<|im_end|>\n", add_special_tokens=False).ids
    assert row["input_ids"][-len(tail):] == tail
    assert row["labels"][-len(tail):] == [IGNORE_INDEX] * len(tail)
    supervised = [t for t in row["labels"] if t != IGNORE_INDEX]
    assert qwen.decode(supervised, skip_special_tokens=False) == "A1<|im_end|>"


def test_two_images_give_two_placeholders_in_order(kept_build):
    _, rows, _ = kept_build
    row = rows["two-images"]
    assert row["input_ids"].count(IMAGE_TOKEN_INDEX) == 2
    assert row["image_paths"] == ["a.png", "b.jpg"]
    assert row["image_sizes"] == [{"width": 30, "height": 30}, {"width": 30, "height": 20}]


def test_long_text_round_trips_unchanged(kept_build, qwen):
    _, rows, _ = kept_build
    sup = [t for t in rows["long"]["labels"] if t != IGNORE_INDEX]
    assert qwen.decode(sup, skip_special_tokens=False) == LONG_OK + "<|im_end|>"


@pytest.mark.parametrize("value,reason,words", [
    ({"conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}]}, "not_alternating",
     ["turn 0", "expected user"]),
    ({"conversations": [{"from": "system", "value": "s"}, {"from": "system", "value": "t"},
                        {"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}, "not_alternating",
     ["turn 1"]),
    ({"conversations": [{"from": "system", "value": "only me"}]}, "no_assistant_turn", ["only a system turn"]),
    ({"conversations": [{"from": "human", "value": "x", "weight": 1}, {"from": "gpt", "value": "y"}]}, "bad_turn",
     ["turn 0", "weight"]),
    ({"conversations": [{"from": "human", "content": "x"}, {"from": "gpt", "value": "y"}]}, "bad_turn", ["turn 0"]),
    ({"conversations": [{"role": "human", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown_role",
     ["turn 0", "'human'", "user/assistant/system"]),
    ({"conversations": [{"from": "Human", "value": "x"}, {"from": "gpt", "value": "y"}]}, "unknown_role",
     ["'Human'"]),
    ({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "a <image>"}], "image": "a.png"},
     "image_placeholder_mismatch", ["outside a user turn"]),
    ({"conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "y"}],
      "image": "a.png"}, "image_placeholder_mismatch", ["2 <image>", "1 image"]),
    ({"conversations": "hello"}, "missing_conversations", ["str"]),
    ({"conversations": None}, "missing_conversations", []),
    ({**conv(), "id": True}, "bad_field", ["'id'"]),
    ({**conv(), "image": ["a.png", 3]}, "bad_field", ["'image'"]),
    ({**conv(), "video": 5}, "bad_field", ["'video'"]),  # ("video": null is a record without a video)
    (conv(reply="<|endoftext|>"), "special_token_in_text", ["turn 1", "<|endoftext|>"]),
])
def test_rejections_say_what_is_wrong(value, reason, words):
    with pytest.raises(Reject) as exc:
        check_record(value, "s", 1, OPTS)
    assert exc.value.rejection.reason == reason
    for w in words:
        assert w in exc.value.rejection.detail, exc.value.rejection.detail


def test_fix_missing_placeholder_inserts_counts_and_trains_on_the_image(tmp_path):
    save_image(tmp_path / "img" / "a.png", (30, 30))
    src = write_jsonl(tmp_path / "in.jsonl", [conv(user="Describe.", image="a.png", id="fixme"),
                                             conv(user="Two?", image=["a.png", "a.png"], id="two")])
    m = run_build([src], tmp_path / "out", image_root=str(tmp_path / "img"), fix_missing_placeholder=True)
    s = m["sources"][0]
    assert (s["kept"], s["placeholder_inserted"], s["quarantined"]) == (1, 1, {"image_placeholder_mismatch": 1})
    (row,) = read_shard(tmp_path / "out" / m["shards"][0]["path"]).to_pylist()
    user_start = row["input_ids"].index(872)  # "user" right after <|im_start|>
    assert row["input_ids"][user_start + 2] == IMAGE_TOKEN_INDEX  # "user", "\n", then the image
    # without the flag the same record is quarantined
    m2 = run_build([src], tmp_path / "out2", image_root=str(tmp_path / "img"))
    assert m2["sources"][0]["quarantined"] == {"image_placeholder_mismatch": 2}
    assert m2["sources"][0]["placeholder_inserted"] == 0


def test_json_list_with_integers_beyond_64_bits_loses_nothing(tmp_path):
    src = tmp_path / "big.json"
    src.write_text(json.dumps([{**conv(), "id": 2**64}, {**conv(), "n": -(10**30)}, conv(reply="  ")]))
    m = run_build([src], tmp_path / "out")
    s = m["sources"][0]
    assert (s["read"], s["kept"], s["quarantined"]) == (3, 2, {"empty_turn": 1})


def test_quarantine_lines_stay_single_lines(tmp_path):
    odd = conv(user="line\u2028separator\u2029paragraph\x85next", reply=" ")
    src = write_jsonl(tmp_path / "in.jsonl", [odd])
    m = run_build([src], tmp_path / "out")
    text = (tmp_path / "out" / "quarantine.jsonl").read_text(encoding="utf-8")
    assert len(text.splitlines()) == 1 == m["totals"]["quarantined"]
    assert json.loads(text)["record"] == odd


def test_overlong_uses_the_multimodal_length(tmp_path):
    """Some 30 text tokens, but the image adds 729 visual tokens: over 700, so quarantined as overlong."""
    save_image(tmp_path / "img" / "a.png", (30, 30))
    src = write_jsonl(tmp_path / "in.jsonl", [conv(user="<image>\nTitle?", reply="A.", image="a.png", id="img"),
                                             conv(user="Title?", reply="A.", id="text")])
    m = run_build([src], tmp_path / "out", image_root=str(tmp_path / "img"), max_length=700)
    s = m["sources"][0]
    assert (s["kept"], s["quarantined"]) == (1, {"overlong": 1})
    (q,) = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert q["sample_id"] == "img" and "multimodal length" in q["detail"]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_hostile_nesting_is_quarantined_in_bounded_memory(tmp_path, fmt):
    """``[[[[...]]]]`` neither crashes parsing (recursion) nor costs memory quadratic in its depth."""
    import tracemalloc

    from parsit_data.sources import MAX_NESTING, expand_inputs, iter_source

    deep = '{"a": ' + "[" * 4000 + "]" * 4000 + "}"
    fine = json.dumps({**conv(), "x": json.loads("[" * (MAX_NESTING - 2) + "]" * (MAX_NESTING - 2))})
    good = json.dumps(conv())
    src = tmp_path / f"in.{fmt}"
    src.write_text("\n".join([deep, fine, good]) + "\n" if fmt == "jsonl" else f"[{deep}, {fine}, {good}]")
    tracemalloc.start()
    try:
        items = list(iter_source(expand_inputs([src])[0]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16e6  # ijson.items needs ~40 MB for this one 40 KB element (prefix strings per level)
    assert [i.rejection.reason if i.rejection else "ok" for i in items] == ["invalid_json", "ok", "ok"]
    m = run_build([src], tmp_path / "out")
    assert (m["sources"][0]["kept"], m["sources"][0]["quarantined"]) == (2, {"invalid_json": 1})
