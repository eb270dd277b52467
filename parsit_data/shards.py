"""Writing shards and small files atomically; checksums.

A file appears under its final name only when it is complete (write to a temporary name in the same
folder, fsync, rename), so a killed build never leaves a half-written shard that looks finished.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa

from parsit_data.constants import SHARD_SCHEMA

_BATCH_ROWS = 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard(path: Path, table: pa.Table) -> tuple[int, str]:
    """Write ``table`` as an Arrow IPC stream at ``path`` atomically. Returns (bytes, sha256)."""
    table = table.cast(SHARD_SCHEMA)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SHARD_SCHEMA) as writer:
        for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
            writer.write_batch(batch)
    buf = sink.getvalue()
    data = buf.to_pybytes()
    atomic_write_bytes(path, data)
    return len(data), hashlib.sha256(data).hexdigest()


def read_shard(path: Path) -> pa.Table:
    """Memory-map a shard (zero copy)."""
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
