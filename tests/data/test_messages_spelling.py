"""Chat ``messages`` with content parts: the same record in the LLaVA spelling gives the same typed record
(hence the same ids); what the template cannot express, or images that do not match the parts, get a reason."""

from __future__ import annotations

import pytest

from parsit_data.records import Reject
from parsit_data.sources import EmbeddedImage
from parsit_data.validate import ValidationOptions, check_record

OPTS = ValidationOptions()


def _check(value):
    return check_record(value, "src", 1, OPTS)[0]


def _user(*parts):
    return {"role": "user", "content": list(parts)}


IMG, REPLY = {"type": "image"}, {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}


def test_parts_mean_what_the_llava_spelling_means():
    msgs = {"id": "a", "images": ["x.png", "y.png"], "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        _user({"type": "text", "text": "Compare "}, IMG, {"type": "text", "text": "with"}, IMG), REPLY]}
    llava = {"id": "a", "image": ["x.png", "y.png"], "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Compare <image>\nwith<image>\n"},
        {"from": "gpt", "value": "Blue."}]}
    assert _check(msgs) == _check(llava)


def test_content_parts_under_conversations_mean_the_same_as_under_messages():
    turns = [_user(IMG, {"type": "text", "text": "Colour?"}), REPLY]
    llava = {"id": "a", "image": "x.png", "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                                           {"from": "gpt", "value": "Blue."}]}
    assert _check({"id": "a", "images": ["x.png"], "conversations": turns}) == _check(llava)
    assert _check({"id": "a", "images": ["x.png"], "messages": turns}) == _check(llava)


def test_images_named_in_the_parts_and_embedded_images_come_in_part_order():
    e = EmbeddedImage("f.parquet row 0 images[0]", b"png")
    rec = _check({"messages": [_user({"type": "image", "image": "b.png"}, {"type": "text", "text": "and"},
                                     {"type": "image", "image": "a.png"}), REPLY]})
    assert rec.images == ["b.png", "a.png"] and rec.turns[0].content == "<image>\nand<image>\n"
    rec = _check({"messages": [_user(IMG, {"type": "text", "text": "?"}), REPLY], "images": [e]})
    assert rec.images == [e]


@pytest.mark.parametrize("value, reason", [
    ({"messages": [_user(IMG, {"type": "text", "text": "?"}), REPLY], "images": []}, "image_placeholder_mismatch"),
    ({"messages": [_user({"type": "text", "text": "?"}), REPLY], "images": ["a.png"]}, "image_placeholder_mismatch"),
    ({"messages": [_user({"type": "image", "image": "a.png"}), REPLY], "images": ["b.png"]},
     "image_placeholder_mismatch"),
    ({"messages": [_user(IMG, {"type": "text", "text": "<image> twice"}), REPLY], "images": ["a.png"]},
     "image_placeholder_mismatch"),
    ({"messages": [_user({"type": "text", "text": "?"}), {"role": "assistant", "content": [IMG]}],
      "images": ["a.png"]}, "image_placeholder_mismatch"),
    ({"messages": [_user({"type": "video"}, {"type": "text", "text": "?"}), REPLY]}, "video_placeholder_mismatch"),
    ({"messages": [_user({"type": "video"}, {"type": "video"}), REPLY], "videos": ["a.mp4", "b.mp4"]},
     "video_unsupported"),
    ({"messages": [_user({"type": "audio"}), REPLY]}, "bad_content_part"),
    ({"messages": [_user("just a string part"), REPLY]}, "bad_content_part"),
    ({"messages": [_user({"type": "text", "text": 5}), REPLY]}, "bad_content_part"),
])
def test_what_the_parts_cannot_say_is_quarantined_with_a_reason(value, reason):
    with pytest.raises(Reject) as exc:
        _check(value)
    assert exc.value.rejection.reason == reason and exc.value.rejection.detail


def test_a_videos_list_of_one_is_the_record_s_video():
    rec, _ = check_record({"videos": ["a.mp4"], "messages": [{"role": "user", "content": "<video>\nQ?"}, REPLY]},
                          "s", 0, ValidationOptions())
    assert rec.video == "a.mp4" and rec.turns[0].content == "<video>\nQ?"
    with pytest.raises(Reject) as exc:
        check_record({"videos": ["a.mp4", "b.mp4"], "conversations": [{"from": "human", "value": "<video>"},
                                                                      {"from": "gpt", "value": "x"}]},
                     "s", 0, ValidationOptions())
    assert exc.value.reason == "video_unsupported"
