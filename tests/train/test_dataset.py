"""Opening builds: zero-copy rows, and refusal of anything that does not match the run."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pyarrow as pa
import pytest
from train_support import QWEN_EOS, make_build

from parsit_data.format import IMAGE_TOKEN_INDEX, MANIFEST_NAME
from parsit_data.errors import ParsitError
from parsit_train.data import ShardDataset


def _rows(build_dir):
    manifest = json.loads((build_dir / MANIFEST_NAME).read_text())
    tables = [pa.ipc.open_stream(pa.memory_map(str(build_dir / s["path"]))).read_all() for s in manifest["shards"]]
    return pa.concat_tables(tables).to_pylist()


def test_rows_match_the_shards_in_order(builds, tok_path):
    ds = ShardDataset([builds["a"], builds["b"]], tok_path)
    expected = _rows(builds["a"]) + _rows(builds["b"])
    assert len(ds) == len(expected) == 60
    assert list(ds.build_offsets) == [0, 40, 60]
    for i in (0, 15, 16, 39, 40, 47, 59):  # shard and build boundaries
        item = ds[i]
        assert item["sample_id"] == expected[i]["sample_id"]
        assert item["input_ids"].tolist() == expected[i]["input_ids"]
        assert item["labels"].tolist() == expected[i]["labels"]
        assert item["num_image_tokens"] == expected[i]["num_image_tokens"]
        assert item["images"] == expected[i]["images"]
        assert item["build"] == (0 if i < 40 else 1)
    assert ds.lengths().tolist() == [r["length"] for r in expected]
    assert ds.has_image().tolist() == [bool(r["images"]) for r in expected]
    with pytest.raises(IndexError):
        ds[60]


def test_what_a_worker_receives_does_not_grow_with_rows(builds, tok_path, tmp_path):
    ds = ShardDataset([builds["a"]], tok_path)
    small = len(pickle.dumps(ds))
    big_dir = make_build(tmp_path, "big", n_image=0, n_text=400, shard_rows=100)
    big = ShardDataset([big_dir], tok_path)
    big[5]  # open a shard
    # What a worker receives does not hold the rows: it grows with the number of shards, not of rows.
    assert len(pickle.dumps(big)) < 2 * small
    clone = pickle.loads(pickle.dumps(big))
    assert clone[399]["sample_id"] == big[399]["sample_id"]


def test_unfinished_build_is_refused(build_copy, tok_path):
    (build_copy / MANIFEST_NAME).unlink()
    with pytest.raises(ParsitError, match="no manifest.json: the build is unfinished"):
        ShardDataset([build_copy], tok_path)


def test_flipped_byte_is_refused(build_copy, tok_path):
    shard = build_copy / "shards" / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ParsitError, match=r"shard shards/shard-00001.arrow of build .* is corrupt: sha256"):
        ShardDataset([build_copy], tok_path)


def test_truncated_shard_is_refused(build_copy, tok_path):
    shard = build_copy / "shards" / "shard-00000.arrow"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(ParsitError, match=r"has \d+ bytes, the manifest says \d+: the file is truncated"):
        ShardDataset([build_copy], tok_path)


def test_missing_shard_is_refused(build_copy, tok_path):
    (build_copy / "shards" / "shard-00002.arrow").unlink()
    with pytest.raises(ParsitError, match="shard-00002.arrow of build .* is missing"):
        ShardDataset([build_copy], tok_path)


def test_other_tokenizer_is_refused(builds, tok_path, tmp_path):
    other = tmp_path / "tok"
    shutil.copytree(tok_path, other)
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["pad_token"] = "<|im_end|>"  # a different tokenizer configuration: a different fingerprint
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ParsitError, match=r"was tokenized with a different tokenizer: manifest fingerprint"):
        ShardDataset([builds["a"]], other)


def test_other_pad_id_is_refused(builds, tok_path):
    with pytest.raises(ParsitError, match=r"pads with id 151643 \('<\|endoftext\|>'\), this run with id 151645"):
        ShardDataset([builds["a"]], tok_path, pad_token_id=QWEN_EOS)
    assert ShardDataset([builds["a"]], tok_path, pad_token_id=151643).pad_token_id == 151643


def test_other_image_token_index_is_refused(build_copy, tok_path):
    mpath = build_copy / MANIFEST_NAME
    manifest = json.loads(mpath.read_text())
    manifest["image_token_index"] = IMAGE_TOKEN_INDEX - 1
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(ParsitError, match=r"marks images with id -201, this trainer expands -200"):
        ShardDataset([build_copy], tok_path)


def test_builds_with_different_geometry_are_refused(builds, tok_path, tmp_path):
    other = make_build(tmp_path, "c", n_image=2, n_text=1, aspect="square")
    with pytest.raises(ParsitError, match="different vision geometries"):
        ShardDataset([builds["a"], other], tok_path)


def test_rows_over_max_length_are_refused_before_training(builds, tok_path):
    lengths = ShardDataset([builds["a"]], tok_path).lengths()
    limit = int(np.sort(lengths)[-3])  # two rows are longer
    with pytest.raises(ParsitError, match=rf"2 rows are longer than max_length={limit}.*never truncates"):
        ShardDataset([builds["a"]], tok_path, max_length=limit)
    ShardDataset([builds["a"]], tok_path, max_length=int(lengths.max()))


def _mapped_kib(path) -> int:
    """Resident KiB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping header line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


def test_worker_page_tables_of_read_rows_are_released(builds, tok_path):
    ds = ShardDataset([builds["a"]], tok_path, release_every=0)
    shard = ds._paths[0]
    assert _mapped_kib(shard) == 0  # construction read lengths and row counts, then let go
    for i in range(10):
        ds[i]
    assert _mapped_kib(shard) > 0
    ids = ds[3]["input_ids"].copy()
    ds.release_pages()
    assert _mapped_kib(shard) == 0
    assert ds[3]["input_ids"].tolist() == ids.tolist()  # the data is still there, mapped again on access
    ds.release_pages()
    auto = ShardDataset([builds["a"]], tok_path, release_every=4)
    for i in range(8):
        auto[i]
    assert _mapped_kib(auto._paths[0]) == 0
