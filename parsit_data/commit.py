"""A partition's commit, and the reuse of one an earlier run committed.

A partition's results are committed in order: shard, quarantine part, then the part file (its commit
marker, holding the shard's checksum and the statistics). A partition whose part file, quarantine part
and shard are all there and verify is reused by the next run of the same build.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import accumulate, chain
from pathlib import Path

import numpy as np
import pyarrow as pa

from parsit_data.dedup.signatures import sig_path, table_bytes
from parsit_data.errors import ParsitError
from parsit_data.format import (SHARD_SCHEMA, SHARDS_DIR, ShardMeta, atomic_write_bytes, part_path,
                                quarantine_part_path, read_part, read_shard_meta, sha256_file, shard_name,
                                write_shard)
from parsit_data.partition import Partition
from parsit_data.rows import PartitionRows
from parsit_data.stats import PartitionStats
from parsit_data.worker import WorkerContext


@dataclass
class PartitionResult:
    index: int
    shard: dict  # {"path", "rows", "bytes", "sha256"}
    stats: PartitionStats
    quarantined: int
    reused: bool = False


def reuse_finished(out: Path, index: int, meta: ShardMeta) -> PartitionResult | None:
    """A partition finished by an earlier run of the same build, whose shard still verifies."""
    try:
        part = read_part(out, index)
        if part is None or part.get("config_hash") != meta.config_hash:
            return None
        shard = out / part["shard"]["path"]
        if not shard.is_file() or sha256_file(shard) != part["shard"]["sha256"] or read_shard_meta(shard) != meta:
            return None  # a shard of another format version is rebuilt, not reused
    except (ParsitError, OSError, pa.ArrowInvalid):
        return None
    if not quarantine_part_path(out, index).is_file():
        return None
    return PartitionResult(index, part["shard"], PartitionStats.from_json(part["stats"]), part["quarantined"], True)


def int32_lists(lists: list[list[int]]) -> pa.ListArray:
    """A ``list<int32>`` column from Python lists: one flat numpy pass, ~6x faster than ``pa.array``."""
    offsets = list(accumulate(map(len, lists), initial=0))
    values = np.fromiter(chain.from_iterable(lists), dtype=np.int32, count=offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def commit_partition(part: Partition, rows: PartitionRows, ctx: WorkerContext) -> PartitionResult:
    """Statistics, then shard, quarantine part and the part file (the partition's commit marker)."""
    out, cols, stats = ctx.out, rows.cols, rows.stats
    qlines = rows.quarantine_lines()
    stats.observe_partition(part.index, part.source, cols, qlines, ctx.tokenizer.tok, ctx.geometry)  # for the report
    for name in ("input_ids", "labels"):
        cols[name] = int32_lists(cols[name])
    table = pa.Table.from_pydict(cols, schema=SHARD_SCHEMA)
    rel = f"{SHARDS_DIR}/{shard_name(part.index)}"
    nbytes, digest = write_shard(out / rel, table, ctx.shard_meta)
    atomic_write_bytes(quarantine_part_path(out, part.index), "".join(q + "\n" for q in qlines).encode())
    if rows.sigs is not None:  # before the part file: a committed partition has its signatures
        atomic_write_bytes(sig_path(out, part.index), table_bytes(rows.sigs.to_table()))
    shard = {"path": rel, "rows": table.num_rows, "bytes": nbytes, "sha256": digest}
    meta = {"config_hash": ctx.config_hash, "index": part.index, "source": part.source, "shard": shard,
            "quarantined": len(qlines), "stats": stats.to_json()}
    atomic_write_bytes(part_path(out, part.index), json.dumps(meta, sort_keys=True).encode())
    return PartitionResult(part.index, shard, stats, len(qlines))
