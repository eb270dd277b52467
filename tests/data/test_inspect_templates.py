"""End to end: templates in a real build (manifest block, quarantine), and ``parsit-data inspect``."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from PIL import Image

import tests.data.templates_support  # noqa: F401  (environment)
from parsit_data.build import build
from parsit_data.config import BuildConfig
from parsit_data.errors import ParsitError
from parsit_data.rowview import load_row

RECORDS = [
    {"id": "img", "image": "page.png",
     "conversations": [{"from": "human", "value": "<image>\nWhat is the title?"},
                       {"from": "gpt", "value": "Annual Report 2023."}]},
    {"id": "multi", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
                                      {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye."}]},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "images").mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(d / "images" / "page.png")
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return d


def run_build(data, out, **kw):
    cfg = BuildConfig(inputs=[str(data / "data.jsonl")], out=str(out), image_root=str(data / "images"),
                      overwrite=True, **kw)
    return build(cfg).model_dump(mode="json")  # the manifest as the JSON it wrote


def rows(out):
    tables = [pa.ipc.open_stream(pa.memory_map(str(p))).read_all() for p in sorted((out / "shards").iterdir())]
    return [r for t in tables for r in t.to_pylist()]


@pytest.fixture(scope="module")
def qwen_build(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "build"
    return out, run_build(data, out, template="qwen_1_5")


def test_manifest_template_block(qwen_build):
    _, m = qwen_build
    t = m["template"]
    assert t["name"] == "qwen_1_5" and t["label_policy"] == "native"
    assert t["system_prompt"] == "You are a helpful assistant." and t["end_of_turn"] == "<|im_end|>"
    assert t["mask_report"]["rendered"].count("⟦") == 2
    assert "assistant\n⟦Annual Report 2023.<|im_end|>⟧\n" in t["mask_report"]["rendered"]


def test_plain_quarantines_multi_round_with_its_reason(data, tmp_path):
    m = run_build(data, tmp_path / "plain", template="plain")
    assert m["totals"]["kept"] == 1 and m["sources"][0]["quarantined"] == {"template_mismatch": 1}
    q = [json.loads(x) for x in (tmp_path / "plain" / "quarantine.jsonl").read_text().splitlines()]
    assert q[0]["sample_id"] == "multi" and q[0]["record"] == RECORDS[1]
    (row,) = rows(tmp_path / "plain")
    assert row["input_ids"][0] == -200 and row["input_ids"][-1] == 151643
    assert m["template"]["mask_report"]["rendered"] == "<image>⟦Annual Report 2023.<|endoftext|>⟧"


def test_llava_next_build_and_refusals(data, tmp_path):
    m = run_build(data, tmp_path / "ln", template="qwen_1_5", label_policy="llava-next")
    assert m["template"]["label_policy"] == "llava-next"
    assert m["template"]["mask_report"]["rendered"].startswith("⟦<|im_start|>⟧system⟦\n⟧You are")
    row = rows(tmp_path / "ln")[0]
    assert row["labels"][:3] == [151644, -100, 198]
    with pytest.raises(ParsitError, match="--template qwen_1_5"):
        run_build(data, tmp_path / "x", template="qwen3", label_policy="llava-next")
    with pytest.raises(ParsitError, match="control token"):
        run_build(data, tmp_path / "y", template="llama3")
    assert not (tmp_path / "y" / "manifest.json").exists()


def test_inspect_row_by_index_and_id(qwen_build):
    out, _ = qwen_build
    v = load_row(out, index=0)
    assert v.sample_id == "img" and v.num_image_tokens == [729]
    kinds = [(p.kind, p.text) for p in v.pieces]
    assert ("image", "<image 1: 729 visual tokens>") in kinds
    assert [t for k, t in kinds if k == "supervised"] == ["Annual Report 2023.<|im_end|>"]
    assert "".join(t for _, t in kinds).startswith("<|im_start|>system\nYou are a helpful assistant.")
    v2 = load_row(out, sample_id="multi")
    assert v2.index == 1 and [p.text for p in v2.pieces if p.kind == "supervised"] == ["Hello.<|im_end|>",
                                                                                     "Bye.<|im_end|>"]
    with pytest.raises(ParsitError, match="out of range"):
        load_row(out, index=2)
    with pytest.raises(ParsitError, match="no row has sample_id"):
        load_row(out, sample_id="nope")


def test_inspect_cli(qwen_build, capsys):
    from parsit_data.cli.main import main

    out, _ = qwen_build
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(out), "--id", "img", "--ids"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "<image 1: 729 visual tokens>" in text and "Annual Report 2023." in text and "80496" in text
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(out), "--index", "0", "--id", "img"])
    assert exc.value.code == 2
