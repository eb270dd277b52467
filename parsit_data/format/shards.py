"""Writing shards and small files atomically; checksums; a shard's identity in its schema metadata.

A file appears under its final name only when it is complete (write to a temporary name in the same
folder, fsync, rename), so a killed build never leaves a half-written shard that looks finished. On an
object store (a :class:`~parsit_data.format.fsio.RemotePath`) the same holds through one PutObject of
the complete buffer (see :mod:`parsit_data.format.fsio` and docs/FORMAT.md).
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from parsit_data.errors import ParsitError
from parsit_data.format.constants import (FORMAT_VERSION, META_CONFIG_HASH, META_FORMAT_VERSION, META_TEMPLATE,
                                          META_TOKENIZER_SHA256, SHARD_SCHEMA)
from parsit_data.format.fsio import RemotePath

_BATCH_ROWS = 1024


@dataclass(frozen=True)
class ShardMeta:
    """What built a shard, in its schema metadata: a lone shard says which build it belongs to."""

    config_hash: str
    tokenizer_sha256: str
    template: str
    format_version: int = FORMAT_VERSION

    def to_metadata(self) -> dict[bytes, bytes]:
        return {
            META_FORMAT_VERSION: str(self.format_version).encode(),
            META_CONFIG_HASH: self.config_hash.encode(),
            META_TOKENIZER_SHA256: self.tokenizer_sha256.encode(),
            META_TEMPLATE: self.template.encode(),
        }

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> "ShardMeta | None":
        """The metadata of a written shard; None for a version 1 shard, which has only its format version."""
        md = schema.metadata or {}
        if META_CONFIG_HASH not in md:
            return None
        return cls(config_hash=md[META_CONFIG_HASH].decode(), tokenizer_sha256=md[META_TOKENIZER_SHA256].decode(),
                   template=md[META_TEMPLATE].decode(), format_version=int(md[META_FORMAT_VERSION]))


def shard_schema(meta: ShardMeta) -> pa.Schema:
    """:data:`SHARD_SCHEMA` with the build's identity in its metadata."""
    return SHARD_SCHEMA.with_metadata(meta.to_metadata())


def sha256_file(path: Path | RemotePath) -> str:
    if isinstance(path, RemotePath):
        return path.sha256()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path | RemotePath, data: bytes) -> None:
    if isinstance(path, RemotePath):  # one upload of the whole buffer: an object store's atomic write
        path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        out_of_space(exc, path, tmp)
        raise


#: A full disk, a quota, a file-size limit: the machine's state, not a bug, so one clear error line.
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def out_of_space(exc: BaseException, path: Path, tmp: Path) -> None:
    """After a failed write: remove the partial temporary file; raise ParsitError if space ran out."""
    try:
        tmp.unlink(missing_ok=True)  # nothing incomplete stays behind, under any name
    except OSError:
        pass
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        raise ParsitError(
            f"cannot write {path}: {exc.strerror} ({errno.errorcode[exc.errno]}). Finished partitions are kept: "
            "free space (or raise the quota or file-size limit) and run the same command again to resume") from None


def write_shard(path: Path | RemotePath, table: pa.Table, meta: ShardMeta) -> tuple[int, str]:
    """Write ``table`` as an Arrow IPC stream at ``path`` atomically. Returns (bytes, sha256)."""
    schema = shard_schema(meta)
    table = table.cast(schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
            writer.write_batch(batch)
    data = sink.getvalue().to_pybytes()
    atomic_write_bytes(path, data)
    return len(data), hashlib.sha256(data).hexdigest()
