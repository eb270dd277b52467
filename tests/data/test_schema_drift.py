"""JSON Schemas: committed files equal the models; real outputs validate against them; manifest model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from parsit_data.cli.main import main
from parsit_data.errors import ParsitError
from parsit_data.format import Manifest, load_manifest
from parsit_data.records import InputRecord
from parsit_data.schemas import MODELS, drifted, schema_files

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schemas_match_the_models():
    stale = drifted(SCHEMAS)
    assert stale == [], f"schemas drifted from the models: {stale}; run `parsit-data schema` and commit"
    assert set(schema_files()) == {f"{k}.schema.json" for k in MODELS} == {"sample.schema.json",
                                                                             "quarantine.schema.json",
                                                                             "manifest.schema.json"}


def test_schema_command_writes_and_checks(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["schema", "--out", str(tmp_path)])
    assert exc.value.code in (0, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(schema_files())
    with pytest.raises(SystemExit) as exc:
        main(["schema", "--out", str(tmp_path), "--check"])
    assert exc.value.code in (0, None)
    doc = json.loads((tmp_path / "manifest.schema.json").read_text())
    doc["required"].remove("sources")  # someone edits the schema by hand, or the model changes
    (tmp_path / "manifest.schema.json").write_text(json.dumps(doc))
    with pytest.raises(SystemExit) as exc:
        main(["schema", "--out", str(tmp_path), "--check"])
    assert exc.value.code == 1
    assert "manifest.schema.json" in capsys.readouterr().out


def test_demo_outputs_validate_against_the_committed_schemas(demo_build):
    manifest = json.loads((demo_build / "manifest.json").read_text())
    _validator("manifest").validate(manifest)
    qv = _validator("quarantine")
    lines = (demo_build / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines
    for line in lines:
        qv.validate(json.loads(line))


def test_manifest_model_is_lossless_and_checks_the_contract(demo_build):
    manifest = json.loads((demo_build / "manifest.json").read_text())
    m = load_manifest(demo_build)
    assert json.loads(m.model_dump_json(by_alias=True)) == manifest  # every key kept, nothing added

    def broken(edit) -> dict:
        d = copy.deepcopy(manifest)
        edit(d)
        return d

    bad = [
        broken(lambda d: d["sources"][0].__setitem__("kept", d["sources"][0]["kept"] + 1)),  # read != kept + q
        broken(lambda d: d["totals"].__setitem__("read", 0)),
        broken(lambda d: d["shards"][0].__setitem__("rows", d["shards"][0]["rows"] + 1)),
        broken(lambda d: d["shards"][0].__setitem__("sha256", "nope")),
        broken(lambda d: d["tokenizer"].__setitem__("pad_token", "")),
        broken(lambda d: d.pop("tokenizer")),
        broken(lambda d: d["sources"].append(copy.deepcopy(d["sources"][0]))),  # duplicate name (and totals)
    ]
    for d in bad:
        with pytest.raises(ValidationError):
            Manifest.model_validate(d)


def test_load_manifest_errors_are_clear(tmp_path, demo_build):
    with pytest.raises(ParsitError, match="not a finished build"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ParsitError, match="not readable JSON"):
        load_manifest(tmp_path)
    d = json.loads((demo_build / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**d, "format_version": 99}))
    with pytest.raises(ParsitError, match="format_version 99"):
        load_manifest(tmp_path)
    d["sources"][0]["read"] += 1
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ParsitError, match="not a valid Parsit manifest"):
        load_manifest(tmp_path)


_TURN = {"from": "human", "value": "hi"}
RECORDS = [
    ({"conversations": [_TURN, {"from": "gpt", "value": "yo"}]}, True),
    ({"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "image": ["a.png"], "id": 3, "extra": {"any": "thing"}}, True),
    ({"conversations": [_TURN], "image": None, "id": None}, True),
    ({"conversations": []}, False),
    ({}, False),
    ({"conversations": [{"from": "robot", "value": "hi"}]}, False),
    ({"conversations": [{"from": "human", "value": 1}]}, False),
    ({"conversations": [{"from": "human", "value": "x", "role": "user"}]}, False),
    ({"conversations": [{"role": "human", "content": "x"}]}, False),
    ({"conversations": [_TURN], "image": 5}, False),
    ({"conversations": [_TURN], "image": ["a", 1]}, False),
    ({"conversations": [_TURN], "id": True}, False),
    ({"conversations": [_TURN], "id": [1]}, False),
    ({"conversations": [["human", "hi"]]}, False),
    # every accepted spelling is in the schema: the other key names, chat messages with content parts
    ({"messages": [{"role": "user", "content": "a"}], "images": "a.png"}, True),
    ({"messages": [{"role": "user", "content": "a"}], "images": [3]}, False),
    ({"messages": 5}, False),
    ({"images": ["a.png"], "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                                         {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}]}, True),
    ({"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png", "text": None},
                                                {"type": "image", "path": "b.png"}, {"type": "video", "video": "c.mp4"}]},
                   {"role": "assistant", "content": "mixed spellings per turn"}]}, True),
    ({"conversations": [{"role": "user", "content": []}]}, True),  # empty: empty_turn, not the schema's job
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, False),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, False),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, False),
    ({"messages": [{"role": "user", "content": [{"type": "image", "image": 5}]}]}, False),
    ({"messages": [{"role": "user", "content": ["a string part"]}]}, False),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "?"}], "name": "x"}]}, False),
]


@pytest.mark.parametrize("record,valid", RECORDS)
def test_sample_schema_and_model_agree(record, valid):
    assert _validator("sample").is_valid(record) is valid
    try:
        InputRecord.model_validate(record)
        ok = True
    except ValidationError:
        ok = False
    assert ok is valid


def test_kept_demo_records_validate_against_the_sample_schema():
    v = _validator("sample")
    demo = REPO / "examples" / "demo"
    lines = (demo / "conversations.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(x) for x in lines if x.strip() and not x.startswith('{"id": "bad-json"')]
    records += json.loads((demo / "captions.json").read_text(encoding="utf-8"))
    for r in records:
        if r.get("id") not in {"bad-role"}:
            v.validate(r)  # semantic problems (placeholders, images, empty text) are not the schema's job
    assert not v.is_valid(next(r for r in records if r.get("id") == "bad-role"))
