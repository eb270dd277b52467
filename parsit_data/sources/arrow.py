"""Parquet files and Arrow IPC files (what ``datasets`` writes, ``save_to_disk`` folders), read with pyarrow.

Parquet is streamed one row group at a time, in batches (never a whole file in memory); an Arrow file one
record batch at a time (memory-mapped when local). A row becomes the same plain record a JSONL line
would be: struct fields that are null are dropped (a struct column gives every row every field), and an
image cell holding bytes (a ``binary`` column, or a ``datasets.Image`` struct ``{bytes, path}`` with bytes)
becomes an :class:`EmbeddedImage` named by file, row and field (``data.parquet row 12 images[0]``). A
``datasets.Image`` struct without bytes is its ``path``, an image file under ``--image-root``.

A row group that cannot be read (corrupt pages) costs exactly its rows: each is quarantined
(``unreadable_input``) under its own position, so ``read = kept + quarantined`` and sampling counts still
hold; the rows after it are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from parsit_data.errors import ParsitError
from parsit_data.format.fsio import RemotePath, arrow_input
from parsit_data.reasons import Reason
from parsit_data.records import Rejection
from parsit_data.sources.raw import EmbeddedImage, RawItem, SourceSpec

#: Rows converted to Python at a time (a row group can hold 100k rows; its images stay in Arrow buffers).
BATCH_ROWS = 256
_IMAGE_FIELDS = ("image", "images")
_ERRORS = (pa.ArrowException, OSError, ValueError, EOFError)


def _name(f) -> str:
    return f.name if isinstance(f, (Path, RemotePath)) else Path(str(f)).name


def _parquet_file(f) -> pq.ParquetFile:
    source = f.fs.open_input_file(f.path) if isinstance(f, RemotePath) else str(f)
    return pq.ParquetFile(source)


def parquet_metadata(f):
    """The file's footer, or a ParsitError naming the file (not Parquet, a corrupt footer)."""
    try:
        return _parquet_file(f).metadata
    except _ERRORS as exc:
        raise ParsitError(f"input {f} cannot be read as Parquet: {str(exc)[:300]}") from None


def _image(cell: Any, where: str) -> Any:
    if isinstance(cell, (bytes, bytearray)):
        return EmbeddedImage(where, bytes(cell))
    if isinstance(cell, dict) and "bytes" in cell:
        data, path = cell.get("bytes"), cell.get("path")
        if isinstance(data, (bytes, bytearray)):
            return EmbeddedImage(where, bytes(data), path if isinstance(path, str) else None)
        if data is None and isinstance(path, str):
            return path
    return _prune(cell)


def _prune(v: Any) -> Any:
    """Drop null fields of structs (Arrow gives every struct every field; JSON would not have them)."""
    if isinstance(v, dict):
        return {k: _prune(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_prune(x) for x in v]
    return v


def row_record(row: dict, where: str) -> dict:
    """A table row as a record: nulls pruned, image cells (top level and in content parts) embedded."""
    out: dict = {}
    for key, value in row.items():
        if value is None:
            continue
        if key in _IMAGE_FIELDS:
            value = ([_image(c, f"{where} {key}[{i}]") for i, c in enumerate(value)] if isinstance(value, list)
                     else _image(value, f"{where} {key}"))
        elif isinstance(value, (bytes, bytearray)):
            value = f"<{len(value)} bytes>"  # not text, not an image field: shown, never decoded
        else:
            value = _prune(value)
            if key == "messages" and isinstance(value, list):
                for t, turn in enumerate(value):
                    parts = turn.get("content") if isinstance(turn, dict) else None
                    if isinstance(parts, list):
                        for p, part in enumerate(parts):
                            if isinstance(part, dict) and "image" in part:
                                part["image"] = _image(part["image"], f"{where} messages[{t}].content[{p}].image")
        out[key] = value
    return out


def _unreadable(spec: SourceSpec, index: int, member: str, what: str, exc: BaseException) -> RawItem:
    return RawItem(spec.name, index, "index", member=member,
                   rejection=Rejection(Reason.UNREADABLE_INPUT, f"{what} cannot be read: {str(exc)[:300]}"))


def _batches_rows(batches, spec: SourceSpec, fname: str, first_row: int, index: int) -> Iterator[RawItem]:
    row = first_row
    for batch in batches:
        for r in batch.to_pylist():
            member = f"{fname} row {row}"
            yield RawItem(spec.name, index, "index", value=row_record(r, member), member=member)
            row += 1
            index += 1


def read_parquet(spec: SourceSpec) -> Iterator[RawItem]:
    index = 0
    for f in spec.files:
        pf, fname = _parquet_file(f), _name(f)
        row = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            done = 0
            try:
                for item in _batches_rows(pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g]), spec, fname,
                                          row, index):
                    yield item
                    done += 1
            except _ERRORS as exc:
                for k in range(done, n):  # the rest of this row group: each row named, each quarantined
                    yield _unreadable(spec, index + k, f"{fname} row {row + k}", f"row group {g} of {fname}", exc)
            row, index = row + n, index + n


def read_parquet_keys(spec: SourceSpec) -> Iterator[RawItem]:
    """:func:`read_parquet`'s items with only the id (from the ``id`` column alone: no image is read) and
    ``at = (file, row group, row)``. An id column that cannot be read gives no ids (positional ones)."""
    index = 0
    for fi, f in enumerate(spec.files):
        pf, fname = _parquet_file(f), _name(f)
        has_id = "id" in pf.schema_arrow.names
        row = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            ids: list = [None] * n
            if has_id:
                try:
                    got = pf.read_row_group(g, columns=["id"]).column(0).to_pylist()
                    ids = got if len(got) == n else ids
                except _ERRORS:
                    pass
            for k, v in enumerate(ids):
                yield RawItem(spec.name, index + k, "index", value={} if v is None else {"id": _prune(v)},
                              member=f"{fname} row {row + k}", at=(fi, g, row + k))
            row, index = row + n, index + n


def read_arrow_keys(spec: SourceSpec) -> Iterator[RawItem]:
    """:func:`read_arrow`'s items with only the id and ``at = (file, batch, row)``: local Arrow files are
    memory-mapped, so reading the id column touches no image bytes; a remote file is streamed past batch by
    batch (one batch in memory, nothing kept but the ids). The unreadable rest of a file is the same single
    rejected item :func:`read_arrow` yields (``at = (file, -1, row)``)."""
    index = 0
    for fi, f in enumerate(spec.files):
        fname, row = _name(f), 0
        try:
            for b, batch in enumerate(_ipc_batches(_ipc_reader(f))):
                n = batch.num_rows
                ids = batch.column("id").to_pylist() if "id" in batch.schema.names else [None] * n
                for k, v in enumerate(ids):
                    yield RawItem(spec.name, index + k, "index", value={} if v is None else {"id": _prune(v)},
                                  member=f"{fname} row {row + k}", at=(fi, b, row + k))
                row, index = row + n, index + n
        except _ERRORS as exc:
            item = _unreadable(spec, index, f"{fname} row {row}", f"{fname} after row {row - 1}", exc)
            yield RawItem(item.source, item.position, item.kind, rejection=item.rejection, member=item.member,
                          at=(fi, -1, row))
            index += 1


def _arrow_groups(spec: SourceSpec, groups: dict[tuple[int, int], dict[int, RawItem]], got: dict) -> None:
    """Read the wanted batches of Arrow files (memory-mapped when local: skipping a batch reads nothing;
    a remote stream is read up to the last wanted batch)."""
    for fi in sorted({fi for fi, _ in groups}):
        f, wanted = spec.files[fi], {b: need for (i, b), need in groups.items() if i == fi}
        row, fname = 0, _name(f)
        try:
            for b, batch in enumerate(_ipc_batches(_ipc_reader(f))):
                if b in wanted:
                    for r in batch.to_pylist():
                        if (k := wanted[b].get(row)) is not None:
                            got[k.at] = RawItem(spec.name, k.position, "index", value=row_record(r, k.member),
                                                member=k.member)
                        row += 1
                else:
                    row += batch.num_rows
                if b >= max(wanted):
                    break
        except _ERRORS as exc:  # the file changed since the driver read it: each wanted row says so
            for need in wanted.values():
                for k in need.values():
                    got.setdefault(k.at, _unreadable(spec, k.position, k.member, fname, exc))


def load_rows(spec: SourceSpec, keys: list[RawItem]) -> list[RawItem]:
    """The records of key items (from :func:`read_parquet_keys` or :func:`read_arrow_keys`), in their
    order: the same items the streaming reader yields, each row group (batch) read once. A rejection the
    key carries (``duplicate_id``, marked by the driver) stays on a record that was read."""
    got: dict[tuple, RawItem] = {}
    if spec.format == "arrow":
        groups: dict[tuple[int, int], dict[int, RawItem]] = {}
        for k in keys:
            if k.at[1] == -1:  # the unreadable rest of a file: already the record
                got[k.at] = RawItem(k.source, k.position, k.kind, rejection=k.rejection, member=k.member)
            else:
                groups.setdefault(k.at[:2], {})[k.at[2]] = k
        _arrow_groups(spec, groups, got)
        return _in_order(keys, got)
    groups = {}
    for k in keys:
        groups.setdefault(k.at[:2], []).append(k)
    files: dict[int, pq.ParquetFile] = {}
    for (fi, g), wanted in groups.items():
        f = spec.files[fi]
        fname = _name(f)
        pf = files.get(fi) or files.setdefault(fi, _parquet_file(f))
        first = sum(pf.metadata.row_group(i).num_rows for i in range(g))
        need = {k.at[2]: k for k in wanted}
        row = first
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g]):
                if not any(row <= r < row + batch.num_rows for r in need):
                    row += batch.num_rows
                    continue
                for r in batch.to_pylist():
                    if row in need:
                        k = need[row]
                        got[k.at] = RawItem(spec.name, k.position, "index", value=row_record(r, k.member),
                                            member=k.member)
                    row += 1
        except _ERRORS as exc:
            for r, k in need.items():
                if k.at not in got:
                    got[k.at] = _unreadable(spec, k.position, k.member, f"row group {g} of {fname}", exc)
    return _in_order(keys, got)


def _in_order(keys: list[RawItem], got: dict) -> list[RawItem]:
    out = []
    for k in keys:
        item = got[k.at]
        if k.rejection is not None and item.rejection is None:
            item = RawItem(item.source, item.position, item.kind, value=item.value, rejection=k.rejection,
                           member=item.member)
        out.append(item)
    return out


def count_parquet(spec: SourceSpec) -> int:
    return sum(parquet_metadata(f).num_rows for f in spec.files)


def _ipc_reader(f):
    src = arrow_input(f)
    try:
        return pa.ipc.open_stream(src)
    except pa.ArrowInvalid:
        return pa.ipc.open_file(arrow_input(f))


def _ipc_batches(reader):
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        return (reader.get_batch(i) for i in range(reader.num_record_batches))
    return reader


def read_arrow(spec: SourceSpec) -> Iterator[RawItem]:
    """Arrow IPC files (``datasets`` writes the stream format); a file that breaks off mid-way yields
    one ``unreadable_input`` item for the rest (its row count is not known)."""
    index = 0
    for f in spec.files:
        fname = _name(f)
        row = 0
        try:
            for batch in _ipc_batches(_ipc_reader(f)):
                for item in _batches_rows([batch], spec, fname, row, index):
                    yield item
                row, index = row + batch.num_rows, index + batch.num_rows
        except _ERRORS as exc:
            yield _unreadable(spec, index, f"{fname} row {row}", f"{fname} after row {row - 1}", exc)
            index += 1


def count_arrow(spec: SourceSpec) -> int:
    """Rows of the Arrow files (batch headers only: a memory map reads no image bytes)."""
    n = 0
    for f in spec.files:
        try:
            n += sum(b.num_rows for b in _ipc_batches(_ipc_reader(f)))
        except _ERRORS:
            n += 1  # what read_arrow yields for the unreadable rest
    return n
