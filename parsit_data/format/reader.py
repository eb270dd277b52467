"""The one reader of a build directory: :func:`open_build` -> :class:`Build`.

Every consumer reads through it: the trainer's dataset, ``parsit-data inspect``, ``parsit-data report``
and the build's own out-dir check. What it gives:

- the typed :class:`~parsit_data.format.manifest.Manifest` (validated, the accounting invariant included);
- verification: every shard the manifest lists exists inside the build directory with its recorded
  size, and (``verify=True``, the default) its full sha256; a failure names the shard and says what to do;
- shards memory-mapped, zero copy: :meth:`Build.map_shard` gives the record batches whose buffers are
  slices of one read-only shared mapping (:class:`MappedShard`), :meth:`Build.table` a ``pa.Table``
  over them.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from parsit_data.errors import ParsitError
from parsit_data.format.constants import (INDEX_COLUMNS, MANIFEST_NAME, SHARD_SCHEMA, VIDEO_COLUMNS, VIDEO_FIELDS,
                                          part_path)
from parsit_data.format.manifest import Manifest, ShardEntry, load_manifest
from parsit_data.format.fsio import RemotePath, arrow_input, check_objects, location
from parsit_data.format.shards import ShardMeta, sha256_file


@dataclass
class MappedShard:
    """One memory-mapped shard: its schema, its non-empty record batches, and where each batch starts."""

    path: Path
    mm: mmap.mmap  # read-only shared mapping of the whole file; every Arrow buffer points into it
    schema: pa.Schema
    batches: list[pa.RecordBatch]
    starts: np.ndarray  # first row of each record batch, then the row count

    @property
    def num_rows(self) -> int:
        return int(self.starts[-1])

    @property
    def meta(self) -> ShardMeta | None:
        """What built this shard (None for a format version 1 shard)."""
        return ShardMeta.from_schema(self.schema)

    def table(self) -> pa.Table:
        return pa.Table.from_batches(self.batches, schema=self.schema)

    def release(self) -> None:
        """Drop this process's page-table entries of the mapping; the data stays in the page cache."""
        self.mm.madvise(mmap.MADV_DONTNEED)


def map_shard(path: str | Path) -> MappedShard:
    """Memory-map one shard file and check its columns against :data:`SHARD_SCHEMA` (zero copy)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise ParsitError(f"cannot read shard {path}: {exc}; restore it or rebuild") from exc
    schema, batches = _read_batches(pa.py_buffer(mm), path)  # zero copy: buffers are slices of the mapping
    counts = np.array([b.num_rows for b in batches], dtype=np.int64)
    return MappedShard(path=path, mm=mm, schema=schema, batches=batches,
                       starts=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


def _read_batches(buf: pa.Buffer, path) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """The schema and non-empty record batches of one shard's bytes, its columns checked."""
    try:
        reader = pa.ipc.open_stream(pa.BufferReader(buf))
        batches = [b for b in reader if b.num_rows]
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise ParsitError(f"cannot read shard {path}: {exc}; restore it or rebuild") from exc
    schema = reader.schema
    missing = [c for c in SHARD_SCHEMA.names if c not in schema.names and c not in VIDEO_COLUMNS]
    if missing:
        raise ParsitError(f"shard {path} lacks columns {missing}: it was not written by this parsit-data")
    for name in ("input_ids", "labels"):
        if schema.field(name).type != SHARD_SCHEMA.field(name).type:
            raise ParsitError(f"shard {path}: column {name} is {schema.field(name).type}, expected "
                              f"{SHARD_SCHEMA.field(name).type}; rebuild it")
    if not any(c in schema.names for c in VIDEO_COLUMNS):  # format 1 or 2: rows without video
        schema, batches = _without_video(schema, batches)
    elif missing := [c for c in VIDEO_COLUMNS if c not in schema.names]:
        raise ParsitError(f"shard {path} has some video columns but lacks {missing}: rebuild it")
    return schema, batches


def _without_video(schema: pa.Schema, batches: list[pa.RecordBatch]) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """A format 1/2 shard's batches with the video columns of rows without video appended (the existing
    columns stay zero copy; the new ones are a few bytes per row)."""
    full = pa.schema(list(schema) + list(VIDEO_FIELDS), metadata=schema.metadata)
    out = []
    for b in batches:
        n = b.num_rows
        extra = [pa.nulls(n, pa.string()), _empty_lists(n, pa.binary()), _empty_lists(n, pa.int32()),
                 _empty_lists(n, pa.float32()), pa.nulls(n, VIDEO_FIELDS[4].type), pa.array(np.zeros(n, np.int32))]
        out.append(pa.RecordBatch.from_arrays(list(b.columns) + extra, schema=full))
    return full, out


def _empty_lists(n: int, value_type: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], value_type))


def read_shard(path: str | Path) -> pa.Table:
    """One shard as a table, memory-mapped (zero copy)."""
    return map_shard(path).table()


def shard_batches(path: str | Path | RemotePath) -> list[pa.RecordBatch]:
    """The non-empty record batches of one shard, columns checked: memory-mapped when local, read whole
    from an object store (for a few shards; the trainer verifies and caches them instead)."""
    if not isinstance(path, RemotePath):
        return map_shard(path).batches
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ParsitError(f"cannot read shard {path}: {exc}") from exc
    return _read_batches(pa.py_buffer(data), path)[1]


def read_shard_table(path: str | Path | RemotePath) -> pa.Table:
    """One shard whole as a table, local or on an object store (its schema kept, also with no rows)."""
    if not isinstance(path, RemotePath):
        return read_shard(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ParsitError(f"cannot read shard {path}: {exc}") from exc
    schema, batches = _read_batches(pa.py_buffer(data), path)
    return pa.Table.from_batches(batches, schema=schema)


def table_file_bytes(table: pa.Table) -> bytes:
    """A small table kept beside a build (a partition's near-duplicate signatures) as Arrow IPC file bytes."""
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def table_from_file_bytes(data: bytes) -> pa.Table:
    """The table :func:`table_file_bytes` wrote."""
    return pa.ipc.open_file(pa.py_buffer(data)).read_all()


def read_shard_index(path: str | Path | RemotePath, columns: tuple[str, ...] = INDEX_COLUMNS) -> pa.Table:
    """A shard's index: only ``columns`` of its rows (:data:`INDEX_COLUMNS`), without token lists or images."""
    batches = shard_batches(path)
    if not batches:
        return pa.table({c: pa.array([], SHARD_SCHEMA.field(c).type) for c in columns})
    return pa.Table.from_batches(batches).select(list(columns)).combine_chunks()


def write_index_file(table: pa.Table, dest: str | Path) -> None:
    """Keep a shard's index in a small local file (Arrow IPC file format; atomic: a reader sees all or none)."""
    dest = Path(dest)
    tmp = dest.with_name(f".{uuid.uuid4().hex}.arrow")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def read_index_file(path: str | Path) -> pa.Table:
    """A shard index written by :func:`write_index_file`, memory-mapped."""
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).read_all()


def read_shard_meta(path: str | Path) -> ShardMeta | None:
    """What built a shard, from its schema alone (None for a version 1 shard); OSError/ArrowInvalid pass."""
    with arrow_input(path) as src:
        return ShardMeta.from_schema(pa.ipc.open_stream(src).schema)


def read_part(out: str | Path, index: int) -> dict | None:
    """``_parts/part-NNNNN.json``, a partition's commit marker: ``config_hash``, ``index``, ``source``,
    ``shard`` (its manifest entry), ``quarantined`` and ``stats``. None when the partition has none."""
    pp = part_path(out, index)
    try:
        data = json.loads(pp.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParsitError(f"{pp} is not readable JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shard"), dict):
        raise ParsitError(f"{pp} is not a partition's commit marker")
    return data


@dataclass(frozen=True)
class Build:
    """A finished build directory: its manifest and its verified shard files, in order."""

    root: Path
    manifest: Manifest
    shard_paths: tuple[Path, ...]

    @property
    def shards(self) -> list[ShardEntry]:
        return self.manifest.shards

    @cached_property
    def shard_rows(self) -> tuple[int, ...]:
        return tuple(int(s.rows) for s in self.manifest.shards)

    @property
    def num_rows(self) -> int:
        return int(sum(self.shard_rows))

    @property
    def config_hash(self) -> str:
        return self.manifest.config_hash

    @property
    def shard_meta(self) -> ShardMeta:
        """The metadata every shard of this build carries (format version 2)."""
        return ShardMeta(config_hash=self.manifest.config_hash, tokenizer_sha256=self.manifest.tokenizer.sha256,
                         template=str(self.manifest.template.get("name", "")))

    def map_shard(self, k: int) -> MappedShard:
        """Shard ``k`` memory-mapped; its row count must be the manifest's."""
        shard = map_shard(self.shard_paths[k])
        self._check_rows(k, shard.num_rows)
        return shard

    def _check_rows(self, k: int, rows: int) -> None:
        if rows != self.shard_rows[k]:
            raise ParsitError(f"shard {self.shard_paths[k]} has {rows} rows, its manifest says {self.shard_rows[k]}: "
                              "rebuild it")

    def table(self, k: int) -> pa.Table:
        """Shard ``k`` as a table: memory-mapped, or for a build on an object store read whole and checked
        against the manifest (size and sha256) first (``inspect`` of an ``s3://`` build)."""
        path = self.shard_paths[k]
        if not isinstance(path, RemotePath):
            return self.map_shard(k).table()
        data, entry = path.read_bytes(), self.shards[k]
        if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ParsitError(f"shard {path} does not match the build's manifest (size or sha256): the store holds "
                              "other bytes than the build wrote; rebuild it")
        schema, batches = _read_batches(pa.py_buffer(data), path)
        self._check_rows(k, sum(b.num_rows for b in batches))
        return pa.Table.from_batches(batches, schema=schema)


def _verify(root: Path, manifest: Manifest, checksums: bool) -> tuple[Path, ...]:
    """Every shard the manifest lists exists inside ``root`` with its recorded size (and sha256)."""
    paths = []
    for entry in manifest.shards:
        path = (root / entry.path).resolve()
        if not path.is_relative_to(root.resolve()):
            raise ParsitError(f"{root / MANIFEST_NAME} lists shard {entry.path!r} outside the build directory")
        if not path.is_file():
            raise ParsitError(f"shard {entry.path} of build {root} is missing: restore it or rebuild {root}")
        size = path.stat().st_size
        if size != entry.bytes:
            raise ParsitError(
                f"shard {entry.path} of build {root} has {size} bytes, the manifest says {entry.bytes}: "
                "the file is truncated or was replaced after the build; restore it or rebuild"
            )
        if checksums:
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise ParsitError(
                    f"shard {entry.path} of build {root} is corrupt: sha256 {digest[:16]}… differs from the "
                    f"manifest's {entry.sha256[:16]}…; restore the file or rebuild {root}"
                )
        paths.append(path)
    return tuple(paths)


def open_build(root: str | Path, verify: bool = True, check_files: bool = True) -> Build:
    """Open a finished build: its manifest, validated, and its shards checked.

    ``verify``: compare each shard's full sha256 with the manifest's (else only its size).
    ``check_files=False`` reads the manifest alone (``parsit-data report`` regenerates from it and the
    per-partition statistics, and must work when the shards were moved away).
    """
    root = location(root, "build")
    manifest = load_manifest(root)
    if isinstance(root, RemotePath):
        # On an object store: existence and size now (one listing); each shard's sha256 when it is read
        # (the trainer's cache verifies every shard as it arrives: parsit_train.data.cache).
        paths = check_objects(root, [(s.path, s.bytes) for s in manifest.shards]) if check_files else tuple(
            root / s.path for s in manifest.shards)
        return Build(root=root, manifest=manifest, shard_paths=paths)
    if check_files:
        paths = _verify(root, manifest, verify)
    else:
        paths = tuple((root / s.path) for s in manifest.shards)
    return Build(root=root, manifest=manifest, shard_paths=paths)
