"""parsit_data.format: the one reader (typed manifest, verification, zero copy), shard metadata, resume."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pytest

from parsit_data.build import build
from parsit_data.config import BuildConfig
from parsit_data.errors import ParsitError
from parsit_data.format import (SHARD_SCHEMA, Manifest, ShardMeta, map_shard, open_build, part_path, read_part,
                                read_shard_meta, sha256_file)


def test_open_build_gives_the_typed_manifest_and_zero_copy_batches(demo_build):
    b = open_build(demo_build)
    assert isinstance(b.manifest, Manifest)
    assert b.num_rows == b.manifest.totals.kept == sum(b.shard_rows) > 30
    shard = b.map_shard(0)
    assert shard.meta == b.shard_meta and shard.meta.template == "qwen_1_5"
    # The batches' buffers lie inside the file's mapping: no copy was made.
    base = pa.py_buffer(shard.mm).address
    col = shard.batches[0].column("input_ids")
    assert base <= col.values.buffers()[1].address < base + len(shard.mm)
    assert shard.table().num_rows == b.shard_rows[0]


def test_open_build_refuses_what_does_not_verify(demo_build, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(demo_build, copy)
    shard = copy / "shards" / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[-40] ^= 1
    shard.write_bytes(bytes(data))
    open_build(copy, verify=False)  # same size: only the checksum can tell
    with pytest.raises(ParsitError, match="is corrupt: sha256"):
        open_build(copy)
    shutil.rmtree(copy / "shards")
    with pytest.raises(ParsitError, match="is missing"):
        open_build(copy)
    assert open_build(copy, check_files=False).num_rows > 0  # the manifest alone (what `report` needs)
    with pytest.raises(ParsitError, match="has no manifest.json"):
        open_build(tmp_path)


def test_read_part_and_shard_meta(demo_build, tmp_path):
    part = read_part(demo_build, 0)
    assert part["shard"]["sha256"] == sha256_file(demo_build / part["shard"]["path"])
    assert read_part(demo_build, 999) is None
    bad = tmp_path / "x"
    part_path(bad, 0).parent.mkdir(parents=True)
    part_path(bad, 0).write_text("{")
    with pytest.raises(ParsitError, match="not readable JSON"):
        read_part(bad, 0)
    assert read_shard_meta(demo_build / part["shard"]["path"]) == open_build(demo_build).shard_meta


def test_a_resumed_build_rebuilds_a_shard_of_another_format_version(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "conversations": [
        {"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}) + "\n" for i in range(6)))
    out = tmp_path / "out"
    cfg = BuildConfig(inputs=[str(src)], out=str(out), shard_rows=3)
    first = build(cfg)
    # Make partition 1 look finished by an older Parsit: its shard has version 1 metadata, and its
    # commit marker the checksum of that shard (so only the metadata tells them apart).
    path = out / first.shards[1].path
    table = map_shard(path).table()
    old = SHARD_SCHEMA.with_metadata({b"parsit.format_version": b"1"})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, old) as w:
        w.write_table(table.cast(old))
    path.write_bytes(sink.getvalue().to_pybytes())
    part = json.loads(part_path(out, 1).read_text())
    part["shard"].update(bytes=path.stat().st_size, sha256=sha256_file(path))
    part_path(out, 1).write_text(json.dumps(part, sort_keys=True))
    (out / "manifest.json").unlink()  # an unfinished build
    assert read_shard_meta(path) is None
    reused = []
    again = build(cfg, on_progress=lambda r: reused.append((r.index, r.reused)))
    assert sorted(reused) == [(0, True), (1, False)]
    assert again.model_dump(exclude={"timing"}) == first.model_dump(exclude={"timing"})
    assert read_shard_meta(path) == ShardMeta(first.config_hash, first.tokenizer.sha256, "qwen_1_5")
