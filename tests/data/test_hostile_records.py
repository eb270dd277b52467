"""The record-level fault boundary: hostile records are quarantined with their own reason, through a
real build (real readers, real tokenizer, real Arrow), the quarantine stays valid UTF-8 JSONL and keeps
each record losslessly, and what is not data (a bug) still stops the build with its own traceback.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from parsit_data import encode, templates
from parsit_data.decode import decode_ids
from parsit_data.format import QUARANTINE_NAME, read_shard
from parsit_data.records import QuarantineRecord

from validate_helpers import check_accounting, run_build, write_jsonl

TURNS = b'"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "x"}]'


def _line(body: bytes) -> bytes:
    return b"{" + body + b"}"


HOSTILE: dict[str, tuple[bytes, str | None]] = {
    # name: (line, reason or None when kept)
    "surrogate_text": (b'{"id": "s-text", "conversations": [{"from": "human", "value": "bad \\ud800 surrogate"}, '
                       b'{"from": "gpt", "value": "x"}]}', "invalid_unicode"),
    "surrogate_id": (_line(b'"id": "s-\\udc00", ' + TURNS), "invalid_unicode"),
    "surrogate_image": (_line(b'"id": "s-img", "image": "a\\ud800.png", "conversations": [{"from": "human", '
                              b'"value": "<image>a"}, {"from": "gpt", "value": "x"}]'), "invalid_unicode"),
    "surrogate_role": (_line(b'"id": "s-role", "conversations": [{"from": "hu\\uDBFFman", "value": "a"}, '
                             b'{"from": "gpt", "value": "x"}]'), "invalid_unicode"),
    "surrogate_key": (_line(b'"id": "s-key", "k\\udfff": 1, ' + TURNS), "invalid_unicode"),
    "surrogate_ignored_field": (_line(b'"id": "s-extra", "note": ["ok", {"deep": "\\ud83d"}], ' + TURNS),
                                "invalid_unicode"),
    "huge_int": (_line(b'"id": ' + b"9" * 5000 + b", " + TURNS), "non_standard_number"),
    "nan": (_line(b'"id": "nan", "score": NaN, ' + TURNS), "non_standard_number"),
    "infinity": (_line(b'"id": "inf", "score": -Infinity, ' + TURNS), "non_standard_number"),
    "float_overflow": (_line(b'"id": "f", "score": 1e400, ' + TURNS), "non_standard_number"),
    "non_utf8": (_line(b'"id": "bad\xff\xfe", ' + TURNS), "non_utf8"),
    "deep": (b"[" * 5000 + b"]" * 5000, "invalid_json"),
    "bare_cr": (_line(b'"id": "cr1", ' + TURNS) + b"\r" + _line(b'"id": "cr2", ' + TURNS), "invalid_json"),
    # kept
    "emoji_pair": (_line(b'"id": "emoji", "conversations": [{"from": "human", "value": "hi \\ud83d\\ude00"}, '
                         b'{"from": "gpt", "value": "\xf0\x9f\x98\x80 \\uD83D\\uDE00"}]'), None),
    "c0_controls": (_line(b'"id": "ctl", "conversations": [{"from": "human", "value": "a\\u0000b\\u001b[0m\\u0007"}, '
                          b'{"from": "gpt", "value": "x\\u0000"}]'), None),
    "bom": (b"\xef\xbb\xbf" + _line(b'"id": "bom", ' + TURNS), None),
    "crlf": (_line(b'"id": "crlf", ' + TURNS) + b"\r", None),
    "line_separators": (_line(b'"id": "ls", "conversations": [{"from": "human", "value": "a\xe2\x80\xa8b\xc2\x85"}, '
                              b'{"from": "gpt", "value": "x\\u2029"}]'), None),
    "big_but_fine_int": (_line(b'"id": ' + b"7" * 400 + b", " + TURNS), None),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    src = write_jsonl(tmp / "in.jsonl", [line for line, _ in HOSTILE.values()])
    manifest = run_build([src], tmp / "out", shard_rows=8)
    return src, tmp / "out", manifest


def test_every_hostile_record_is_kept_or_quarantined_with_its_reason(built):
    src, out, manifest = built
    check_accounting(manifest, out, {"in": len(HOSTILE)})
    raw = (out / QUARANTINE_NAME).read_bytes()
    raw.decode("utf-8")  # strict: the quarantine is valid UTF-8 whatever the records held
    lines = raw.split(b"\n")[:-1]
    assert all(b"\r" not in x for x in lines)
    got = {q["line"]: q for q in map(json.loads, lines)}
    assert len(got) == len(lines)  # one record, one line (U+2028 & co. stay escaped)
    for lineno, (name, (line, reason)) in enumerate(HOSTILE.items(), start=1):
        if reason is None:
            assert lineno not in got, (name, got.get(lineno))
        else:
            assert got[lineno]["reason"] == reason, (name, got[lineno])
            QuarantineRecord.model_validate(got[lineno])  # the schema, enum of reasons included
            assert list(got[lineno]) == [f for f in QuarantineRecord.model_fields if f in got[lineno]]


def test_quarantine_keeps_each_record_losslessly(built):
    src, out, _ = built
    by_line = {q["line"]: q for q in map(json.loads, (out / QUARANTINE_NAME).read_text("utf-8").splitlines())}
    names = list(HOSTILE)
    for lineno, q in by_line.items():
        line, _ = HOSTILE[names[lineno - 1]]
        if q["reason"] == "non_utf8":
            assert base64.b64decode(q["record_b64"]) == line  # the exact bytes
            assert isinstance(q["record"], str)
        elif q["reason"] == "invalid_unicode":
            assert q["record"] == json.loads(line)  # the same strings, lone surrogates included
            assert "record_b64" not in q
            assert q["sample_id"] == f"in:{lineno}" or "\\u" not in q["sample_id"]
        elif q["record"] is not None:
            assert q["record"] == line.decode("utf-8").rstrip("\r\n")  # the raw line as text


def test_kept_hostile_text_round_trips_through_the_tokenizer(built, qwen):
    _, out, manifest = built
    rows = {r["sample_id"]: r for s in manifest["shards"] for r in read_shard(out / s["path"]).to_pylist()}
    assert set(rows) == {"emoji", "ctl", "bom", "crlf", "ls", "7" * 400}
    text = decode_ids(qwen, rows["ctl"]["input_ids"])
    assert "a\x00b\x1b[0m\x07" in text and "x\x00" in text  # NUL and C0 controls are kept, exactly
    assert "hi \U0001F600" in decode_ids(qwen, rows["emoji"]["input_ids"])
    assert "a\u2028b\x85" in decode_ids(qwen, rows["ls"]["input_ids"])


def test_json_list_with_hostile_elements(tmp_path):
    """A JSON list: a lone surrogate is quarantined (yajl would silently make it '?'), the rest kept;
    a NaN breaks the stream, so the rest of the list is one entry with its reason."""
    good = b'{"id": "g%d", ' + TURNS + b"}"
    body = b"\xef\xbb\xbf[" + b", ".join([good % 0, _line(b'"id": "bad", "conversations": [{"from": "human", '
                                                          b'"value": "\\ud800"}, {"from": "gpt", "value": "x"}]'),
                                          good % 1, b'{"id": "emoji", "conversations": [{"from": "human", "value": '
                                                    b'"\\ud83d\\ude00"}, {"from": "gpt", "value": "x"}]}']) + b"]"
    (tmp_path / "l.json").write_bytes(body)
    (tmp_path / "n.json").write_bytes(b"[" + good % 2 + b", " + _line(b'"x": NaN, ' + TURNS) + b", " + good % 3 + b"]")
    m = run_build([tmp_path / "l.json", tmp_path / "n.json"], tmp_path / "out")
    check_accounting(m, tmp_path / "out")
    q = [json.loads(x) for x in (tmp_path / "out" / QUARANTINE_NAME).read_text("utf-8").splitlines()]
    assert [(x["source"], x["index"], x["reason"]) for x in q] == [("l", 1, "invalid_unicode"),
                                                                     ("n", 1, "non_standard_number")]
    assert q[0]["record"]["conversations"][0]["value"] == "\ud800"
    rows = [r for s in m["shards"] for r in read_shard(tmp_path / "out" / s["path"]).column("sample_id").to_pylist()]
    assert rows == ["g0", "g1", "emoji", "g2"]


def test_a_bug_is_not_data_it_stops_the_build_with_its_traceback(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", [json.loads(b"{" + TURNS + b"}")])
    tmpl_cls = type(templates.get_template("qwen_1_5", "qwen3"))

    def broken_render(self, *a, **k):
        raise KeyError("a bug in a template")

    monkeypatch.setattr(tmpl_cls, "render", broken_render)
    with pytest.raises(KeyError, match="a bug in a template") as info:
        run_build([src], tmp_path / "out")
    assert any(f.name == "broken_render" for f in info.traceback)  # its own traceback, not a ParsitError


def test_a_tokenizer_failure_no_record_reproduces_is_raised_not_quarantined(tmp_path, monkeypatch):
    """The per-record retry pins a failure to a record only when that record fails alone."""
    src = write_jsonl(tmp_path / "in.jsonl", [json.loads(b'{"id": "%d", ' % i + TURNS + b"}") for i in range(3)])
    real_submit = encode.SegmentTokenizer.submit

    def submit_failing_once(self, batch, unmask=()):
        pending = real_submit(self, batch, unmask)
        if batch:
            pending._future = type(pending._future)()
            pending._future.set_exception(RuntimeError("tokenizer thread died"))
        return pending

    monkeypatch.setattr(encode.SegmentTokenizer, "submit", submit_failing_once)
    with pytest.raises(RuntimeError, match="tokenizer thread died"):
        run_build([src], tmp_path / "out")
