"""Every row of the demo build: decoding round-trips, and token boundaries follow inference.

The rendering here is written independently of parsit_data.templates (a plain f-string ChatML), so a
template bug cannot hide behind its own output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from parsit_data.format import read_shard

IM_START, IM_END, IMAGE = 151644, 151645, -200
DEFAULT_SYSTEM = "You are a helpful assistant."
DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


def _records(demo_dir) -> dict[str, dict]:
    out = {}
    for line in (demo_dir / "conversations.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.setdefault(r["id"], r)
    for r in json.loads((demo_dir / "captions.json").read_text(encoding="utf-8")):
        out[r["id"]] = r
    return out


def _turns(rec):
    role = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}
    return [(role[t.get("from", t.get("role"))], t.get("value", t.get("content"))) for t in rec["conversations"]]


def _render(rec) -> str:
    turns = _turns(rec)
    if turns[0][0] != "system":
        turns = [("system", DEFAULT_SYSTEM)] + turns
    return "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in turns)


def _rows(build_dir):
    rows = []
    for shard in sorted((build_dir / "shards").glob("*.arrow")):
        rows += read_shard(shard).to_pylist()
    return rows


def _decode(tok, ids):
    out, run = [], []
    for i in ids:
        if i == IMAGE:
            out.append(tok.decode(run, skip_special_tokens=False))
            out.append("<image>")
            run = []
        else:
            run.append(i)
    out.append(tok.decode(run, skip_special_tokens=False))
    return "".join(out)


def _encode_text(tok, text):
    """How inference tokenizes prompt text: split at <image>, each piece encoded on its own."""
    ids = []
    for k, piece in enumerate(text.split("<image>")):
        if k:
            ids.append(IMAGE)
        if piece:
            ids += tok.encode(piece, add_special_tokens=False).ids
    return ids


def test_every_row_decodes_to_the_rendered_text(demo_build, qwen):
    recs = _records(DEMO)
    rows = _rows(demo_build)
    assert len(rows) == json.loads((demo_build / "manifest.json").read_text())["totals"]["kept"] > 30
    for row in rows:
        assert _decode(qwen, row["input_ids"]) == _render(recs[row["sample_id"]]), row["sample_id"]


def test_token_boundaries_follow_inference(demo_build, qwen):
    recs = _records(DEMO)
    checked_newline_reply = False
    for row in _rows(demo_build):
        ids, labels = row["input_ids"], row["labels"]
        turns = _turns(recs[row["sample_id"]])
        if turns[0][0] != "system":
            turns = [("system", DEFAULT_SYSTEM)] + turns
        # Walk the turns: each is <|im_start|> TEXT <|im_end|> "\n".
        pos = 0
        for role, content in turns:
            assert ids[pos] == IM_START
            end = ids.index(IM_END, pos)
            inner = ids[pos + 1:end]
            if role == "assistant":
                header = qwen.encode("assistant\n", add_special_tokens=False).ids
                reply = qwen.encode(content, add_special_tokens=False).ids
                # The reply is tokenized on its own, after the header, as generation produces it.
                assert inner == header + reply, row["sample_id"]
                assert labels[pos + 1 + len(header):end + 1] == reply + [IM_END]
                assert set(labels[pos:pos + 1 + len(header)]) == {-100}
                if content.startswith("\n"):
                    joined = qwen.encode("assistant\n" + content, add_special_tokens=False).ids
                    assert joined != inner  # the case that tells the two rules apart
                    checked_newline_reply = True
            else:
                # Prompt text between two control tokens tokenizes as the tokenizer encodes it.
                assert inner == _encode_text(qwen, f"{role}\n{content}"), row["sample_id"]
                assert set(labels[pos:end + 1]) == {-100}
            assert [ids[end + 1]] == qwen.encode("\n", add_special_tokens=False).ids and labels[end + 1] == -100
            pos = end + 2
        assert pos == len(ids)
    assert checked_newline_reply


def test_datasets_from_file_memory_maps_every_shard(demo_build):
    import datasets

    for shard in sorted((demo_build / "shards").glob("*.arrow")):
        ds = datasets.Dataset.from_file(str(shard))
        table = read_shard(shard)
        assert ds.num_rows == table.num_rows
        assert ds["sample_id"] == table.column("sample_id").to_pylist()
        assert ds[0]["input_ids"] == table.column("input_ids")[0].as_py()
        assert ds[0]["labels"] == table.column("labels")[0].as_py()


def test_shards_are_ipc_streams_with_schema_metadata(demo_build):
    from parsit_data.format import SHARD_SCHEMA, ShardMeta, open_build, shard_schema

    m = json.loads((demo_build / "manifest.json").read_text())
    meta = ShardMeta(m["config_hash"], m["tokenizer"]["sha256"], m["template"]["name"])
    assert meta == open_build(demo_build).shard_meta
    for shard in sorted((demo_build / "shards").glob("*.arrow")):
        reader = pa.ipc.open_stream(pa.memory_map(str(shard)))
        assert reader.schema.equals(shard_schema(meta), check_metadata=True)
        assert reader.schema.equals(SHARD_SCHEMA)  # the columns; the metadata says which build made the shard
        md = reader.schema.metadata
        assert md[b"parsit.format_version"] == b"3" and md[b"parsit.config_hash"] == m["config_hash"].encode()
        assert md[b"parsit.tokenizer_sha256"] == m["tokenizer"]["sha256"].encode()
        assert md[b"parsit.template"] == b"qwen_1_5"


def test_accounting_and_manifest(demo_build):
    m = json.loads((demo_build / "manifest.json").read_text())
    qlines = (demo_build / "quarantine.jsonl").read_text().splitlines()
    for s in m["sources"]:
        q = [x for x in map(json.loads, qlines) if x["source"] == s["name"]]
        assert s["read"] == s["kept"] + len(q)
        assert s["quarantined"] == {r: sum(1 for x in q if x["reason"] == r) for r in {x["reason"] for x in q}}
    assert m["totals"]["read"] == m["totals"]["kept"] + len(qlines)
    assert sum(sh["rows"] for sh in m["shards"]) == m["totals"]["kept"]
    assert m["tokenizer"]["pad_token"] == "<|endoftext|>" and m["tokenizer"]["pad_token_id"] == 151643
    assert m["tokenizer"]["eos_token_id"] == 151645 and len(m["tokenizer"]["sha256"]) == 64
    assert m["image_token_index"] == -200 and m["vision"]["tokens_per_image"] == 729
    # Every deliberately malformed demo record is quarantined with its own reason.
    reasons = {x["sample_id"]: x["reason"] for x in map(json.loads, qlines)}
    assert reasons["bad-escape"] == "image_outside_root"
    assert reasons["bad-missing-image"] == "image_missing"
    assert reasons["bad-truncated-image"] == "image_unreadable"
    assert reasons["bad-control-token"] == "special_token_in_text"
    assert reasons["bad-no-placeholder"] == "image_placeholder_mismatch"
    assert "invalid_json" in reasons.values() and "duplicate_id" in reasons.values()
