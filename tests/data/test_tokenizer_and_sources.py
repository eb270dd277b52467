"""Explicit pad token, input formats (JSON list streamed, JSONL, YAML mixtures), and the CLI shell."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parsit_data.build import build
from parsit_data.cli.main import app
from parsit_data.config import BuildConfig
from parsit_data.errors import ParsitError
from parsit_data.sources import expand_inputs, iter_source
from parsit_data.tokenizer import describe_tokenizer

REC = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}


@pytest.mark.parametrize("pad,msg", [("", "empty"), ("not one token", "single entry"), ("<|nope|>", "single entry")])
def test_bad_pad_tokens_are_refused(qwen_path, pad, msg):
    with pytest.raises(ParsitError, match=msg):
        describe_tokenizer(qwen_path, pad)


def test_tokenizer_without_pad_token_needs_one(tmp_path, qwen_path):
    folder = tmp_path / "tok"
    shutil.copytree(qwen_path, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["pad_token"] = None
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ParsitError, match="--pad-token"):
        describe_tokenizer(folder)
    _, info = describe_tokenizer(folder, "<|endoftext|>")
    assert info.pad_token_id == 151643
    # A different tokenizer config is a different fingerprint.
    _, orig = describe_tokenizer(qwen_path)
    assert orig.sha256 != info.sha256


def test_json_list_is_streamed_and_a_broken_tail_is_quarantined(tmp_path):
    good = [dict(REC, id=f"j{i}") for i in range(3)]
    p = tmp_path / "list.json"
    p.write_text(json.dumps(good)[:-1] + ', {"id": "x", "conv')  # malformed after element 2
    (spec,) = expand_inputs([p])
    assert spec.format == "json"
    items = list(iter_source(spec))
    assert [i.value["id"] for i in items[:3]] == ["j0", "j1", "j2"]
    assert items[3].rejection.reason == "invalid_json" and len(items) == 4
    m = build(BuildConfig(inputs=[str(p)], out=str(tmp_path / "o")))
    assert (m.totals.read, m.totals.kept, m.totals.quarantined) == (4, 3, 1)


def test_non_utf8_line_is_quarantined(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(json.dumps(REC).encode() + b"\n" + b'{"id": "\xff\xfe"}\n')
    build(BuildConfig(inputs=[str(p)], out=str(tmp_path / "o")))
    (q,) = [json.loads(x) for x in (tmp_path / "o" / "quarantine.jsonl").read_text().splitlines()]
    assert q["reason"] == "non_utf8" and q["line"] == 2 and "\\xff" in q["record"]


def test_yaml_mixture_sampling_is_seeded_and_recorded(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(dict(REC, id=f"r{i}")) + "\n" for i in range(100)))
    mix = tmp_path / "mix.yaml"
    mix.write_text("datasets:\n"
                   "  - json_path: d.jsonl\n    sampling_strategy: first:10\n"
                   "  - json_path: d.jsonl\n    sampling_strategy: end:5%\n"
                   "  - json_path: d.jsonl\n    sampling_strategy: random:20%\n")
    specs = expand_inputs([mix], seed=7)
    ids = [[i.value["id"] for i in iter_source(s)] for s in specs]
    assert ids[0] == [f"r{i}" for i in range(10)]
    assert ids[1] == [f"r{i}" for i in range(95, 100)]
    assert len(ids[2]) == 20 and ids[2] == sorted(ids[2], key=lambda s: int(s[1:]))  # input order kept
    assert ids[2] == [i.value["id"] for i in iter_source(expand_inputs([mix], seed=7)[2])]  # seeded
    assert ids[2] != [i.value["id"] for i in iter_source(expand_inputs([mix], seed=8)[2])]
    assert [s.name for s in specs] == ["d", "d-2", "d-3"]
    with pytest.raises(ParsitError, match="sampling_strategy"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("datasets:\n  - json_path: d.jsonl\n    sampling_strategy: most\n")
        expand_inputs([bad])


def test_cli_build_help_and_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["build", "--help"])
    assert res.exit_code == 0
    for opt in ("--out", "--tokenizer", "--template", "--image-root", "--max-length", "--pad-token",
                "--label-policy", "--shard-rows", "--engine", "--image-max-side"):
        assert opt in res.output
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps(REC) + "\n")
    from parsit_data.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["build", str(src), "--out", str(tmp_path / "o"), "--pad-token", ""])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["build", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["build", str(src), "--out", str(tmp_path / "o"), "--shard-rows", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["build", str(src), "--out", str(tmp_path / "o"), "--quiet"])
    assert e.value.code == 0
    assert (tmp_path / "o" / "manifest.json").is_file()
