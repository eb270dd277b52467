"""Property-based: arbitrary JSON and mangled records never crash validation, and nothing is lost.

The validator may only ever raise :class:`Reject` (with a documented code); what it accepts satisfies
the invariants later stages rely on; and for a whole build -- JSONL and JSON-list sources full of
garbage, non-UTF-8 bytes, hostile image paths and duplicate ids -- every record read is either a row
or a quarantine line, per source, in the manifest, in quarantine.jsonl and in the shards.
Example counts are modest so the suite stays fast.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsit_data.format import IMAGE_PLACEHOLDER
from parsit_data.images import ImageOptions
from parsit_data.precheck import precheck
from parsit_data.reasons import REASONS
from parsit_data.records import Reject
from parsit_data.sources import RawItem
from parsit_data.templates import get_template
from parsit_data.validate import ValidationOptions, check_item, check_record, control_tokens_of

from validate_helpers import check_accounting, png_header_only, run_build, save_image, truncated_png

CONTROL = control_tokens_of(get_template("qwen_1_5")) | {"<|endoftext|>"}
VOPTS = [ValidationOptions(CONTROL), ValidationOptions(CONTROL, fix_missing_placeholder=True)]

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                              max_size=4),
                           max_leaves=12)
roles = st.sampled_from(["human", "gpt", "system", "user", "assistant", "robot", "", "Human", " gpt"]) | json_scalars
texts = st.one_of(st.text(max_size=24),
                  st.sampled_from(["ok", "<image>", "<image>\nWhat is it?", "<image><image>", "<|im_start|>",
                                   "say <|im_end|>", "<|endoftext|>", "   ", "", "\n", "<video>"]),
                  json_scalars)
turns = st.one_of(st.fixed_dictionaries({"from": roles, "value": texts}),
                  st.fixed_dictionaries({"role": roles, "content": texts}),
                  st.fixed_dictionaries({"from": roles, "value": texts}, optional={"role": roles, "weight": json_values}),
                  json_values)
IMAGE_NAMES = ["ok.png", "ok.jpg", "tiny.png", "zero.png", "bomb.png", "cut.png", "missing.png", "../out/secret.png",
               "link_out.png", "link_in.png", "sub/../ok.png", "/etc/hostname", "", "a\x00b", ".", "sub"]
image_names = st.sampled_from(IMAGE_NAMES) | st.text(max_size=8)
images = st.one_of(st.none(), image_names, st.lists(image_names, max_size=3), json_values)
mangled = st.fixed_dictionaries(
    {"conversations": st.lists(turns, max_size=5)},
    optional={"id": st.sampled_from(["a", "b", 1, 2, ""]) | json_values, "image": images, "video": json_scalars,
              "source": json_values, "messages": st.lists(turns, max_size=3)},
)
# Records that are mostly well-formed, so the accepting path is exercised too.
good_text = st.text(min_size=1, max_size=30).filter(lambda s: s.strip() and "<" not in s)


@st.composite
def plausible(draw):
    rounds = draw(st.integers(1, 3))
    conv = [{"from": "system", "value": draw(good_text)}] if draw(st.booleans()) else []
    for _ in range(rounds):
        conv += [{"from": "human", "value": draw(good_text)}, {"from": "gpt", "value": draw(good_text)}]
    if draw(st.booleans()):
        conv.append({"from": "human", "value": draw(good_text)})  # ends on an unanswered user turn
    rec: dict = {"id": draw(st.sampled_from(["p1", "p2", "p3"]) | st.uuids().map(str)), "conversations": conv}
    imgs = draw(st.lists(st.sampled_from(["ok.png", "ok.jpg", "link_in.png"] + IMAGE_NAMES[:8]), max_size=2))
    if imgs:
        rec["image"] = imgs if len(imgs) > 1 or draw(st.booleans()) else imgs[0]
        if draw(st.integers(0, 4)):  # usually place the placeholders correctly
            conv[1 if conv[0]["from"] == "system" else 0]["value"] = IMAGE_PLACEHOLDER * len(imgs) + "\n" + "x"
    return rec


records = st.one_of(json_values, mangled, plausible())


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("prop")
    root = tmp / "root"
    save_image(root / "ok.png", (32, 32))
    save_image(root / "ok.jpg", (48, 20), fmt="JPEG")
    save_image(root / "tiny.png", (4, 4))
    (root / "sub").mkdir()
    (root / "zero.png").write_bytes(b"")
    (root / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    truncated_png(root / "cut.png")
    save_image(tmp / "out" / "secret.png")
    (root / "link_out.png").symlink_to(tmp / "out" / "secret.png")
    (root / "link_in.png").symlink_to(root / "ok.png")
    return root


def _assert_sound(record, imgs) -> None:
    """What later stages rely on, for every accepted record."""
    body = record.turns[1:] if record.turns[0].role == "system" else record.turns
    assert [t.role for t in body] == ["user", "assistant"] * (len(body) // 2) + ["user"] * (len(body) % 2)
    assert any(t.role == "assistant" for t in body)
    assert all(t.content.strip() for t in record.turns)
    assert not any(tok in t.content for t in record.turns for tok in CONTROL)
    assert sum(t.content.count(IMAGE_PLACEHOLDER) for t in record.turns) == len(record.images) == len(imgs)
    assert not any(IMAGE_PLACEHOLDER in t.content for t in record.turns if t.role != "user")


@settings(max_examples=300, deadline=None)
@given(value=records, fix=st.booleans())
def test_check_record_only_ever_rejects(value, fix):
    try:
        record, notes = check_record(value, "src", 1, VOPTS[fix])
    except Reject as r:
        assert r.rejection.reason in REASONS and r.rejection.detail
        return
    _assert_sound(record, record.images)
    assert set(notes) <= {"placeholder_inserted"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=records, mode=st.sampled_from(["full", "header"]), load=st.booleans())
def test_check_item_with_real_images_only_ever_rejects(image_root, value, mode, load):
    opts = ImageOptions(root=image_root, check=mode, min_side=8, max_side=16 if load else None)
    try:
        record, imgs, _ = check_item(RawItem("src", 1, "line", value=value), VOPTS[0], opts, load=load)
    except Reject as r:
        assert r.rejection.reason in REASONS and r.rejection.detail
        return
    _assert_sound(record, imgs)
    assert all(i.width >= 8 and i.height >= 8 for i in imgs)


# --- whole inputs: the accounting invariant -----------------------------------------------------------

raw_lines = st.binary(max_size=24).map(lambda b: b.replace(b"\n", b" "))
jsonl_line = st.one_of(records.map(lambda v: json.dumps(v).encode()), raw_lines,
                       st.just(b'{"conversations": [{"from": "human", "value": "caf\xe9"}]}'))
FIRST = json.dumps({"id": "first", "conversations": [{"from": "human", "value": "hi"},
                                                     {"from": "gpt", "value": "hello"}]}).encode()
json_list_values = st.lists(st.one_of(mangled, plausible()), max_size=6)


def _write_inputs(d: Path, jsonl_a, jsonl_b, listed, cut) -> tuple[list[Path], dict[str, int | None]]:
    paths, expected = [], {}
    for name, lines in (("a", jsonl_a), ("b", jsonl_b)):
        p = d / f"{name}.jsonl"
        p.write_bytes(b"".join(line + b"\n" for line in [FIRST, *lines]))
        paths.append(p)
        # blank lines are not records (nor is a line holding only a byte order mark: it is skipped)
        expected[name] = 1 + sum(1 for line in lines if line.removeprefix(b"\xef\xbb\xbf").strip())
    p = d / "c.json"
    p.write_text(json.dumps(listed, allow_nan=False), encoding="utf-8")
    paths.append(p)
    expected["c"] = len(listed)
    if cut:
        p = d / "d.json"
        text = json.dumps(listed, allow_nan=False)
        p.write_text(text[: max(1, len(text) - cut)], encoding="utf-8")
        paths.append(p)
        expected["d"] = None  # a broken tail is one quarantined entry wherever it breaks
    return paths, expected


list_values = st.lists(st.one_of(mangled, plausible()),
                       max_size=5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=st.lists(jsonl_line, max_size=12), b=st.lists(jsonl_line, max_size=6), listed=list_values,
       cut=st.integers(0, 30), mode=st.sampled_from(["full", "header"]))
def test_precheck_accounting(image_root, a, b, listed, cut, mode):
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        inputs, expected = _write_inputs(d, a, b, listed, cut)
        res = precheck(inputs, vopts=VOPTS[0], iopts=ImageOptions(root=image_root, check=mode, min_side=8),
                       quarantine_out=d / "q.jsonl")
        qlines = [json.loads(x) for x in (d / "q.jsonl").read_text(encoding="utf-8").splitlines()]
        for spec in res.specs:
            s = res.stats.sources[spec.name]
            assert s.read == s.kept + sum(s.quarantined.values())
            if expected[spec.name] is not None:
                assert s.read == expected[spec.name]
            assert sum(1 for q in qlines if q["source"] == spec.name) == sum(s.quarantined.values())
        assert all(q["reason"] in REASONS for q in qlines)


@pytest.mark.timeout(300)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(a=st.lists(jsonl_line, max_size=12), b=st.lists(jsonl_line, max_size=6), listed=list_values,
       cut=st.integers(0, 30), shard_rows=st.integers(1, 5))
def test_build_accounting(image_root, a, b, listed, cut, shard_rows):
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        inputs, expected = _write_inputs(d, a, b, listed, cut)
        out = d / "out"
        manifest = run_build(inputs, out, image_root=str(image_root), min_image_side=8, max_length=900,
                             shard_rows=shard_rows, fix_missing_placeholder=True)
        check_accounting(manifest, out, {k: v for k, v in expected.items() if v is not None} | {
            k: next(s["read"] for s in manifest["sources"] if s["name"] == k) for k, v in expected.items()
            if v is None})
        assert os.path.isfile(out / "manifest.json")
