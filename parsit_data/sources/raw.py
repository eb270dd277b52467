"""What every reader yields (:class:`RawItem`), the source it reads (:class:`SourceSpec`), and an image whose
bytes came inside the input (:class:`EmbeddedImage`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parsit_data.records import Rejection


@dataclass(frozen=True)
class RawItem:
    """One record as read: parsed ``value``, or ``rejection`` with the ``raw`` text.

    Provenance: ``source`` (the source's name), ``position`` (1-based line for JSONL, ``kind="line"``;
    0-based index of the record in its source for everything else, ``kind="index"``) and, for
    containers of several files or members, ``member`` (the Parquet/Arrow file and its row, the tar
    shard and the sample's key).
    """

    source: str
    position: int
    kind: str  # "line" (1-based, JSONL) or "index" (0-based: JSON list element, table row, tar sample)
    value: Any = None
    raw: str | None = None
    rejection: Rejection | None = None
    #: The exact bytes of a line that is not valid UTF-8 (kept losslessly in the quarantine).
    raw_bytes: bytes | None = None
    member: str | None = None
    #: Where a reader finds the record again (a key item of a table source: ``(file, row group, row)``);
    #: None on a record that was read.
    at: tuple | None = None


@dataclass(frozen=True, eq=False)
class EmbeddedImage:
    """Image bytes that came inside the input (a Parquet/Arrow cell, a ``datasets.Image`` struct, a tar
    member). ``where`` names them for the quarantine (``file.parquet row 12 images[0]``,
    ``shard.tar:key.jpg``): a quarantine line shows ``where`` and the size, never the bytes."""

    where: str
    data: bytes = field(repr=False)
    name: str | None = None  # the path the struct carried, if any (informative only)

    def to_json(self) -> dict:
        return {"embedded": self.where, "bytes": len(self.data)}


@dataclass
class SourceSpec:
    """One input (a file, a folder or glob of files, a ``save_to_disk`` folder, tar shards) and how to sample it."""

    name: str
    path: Any  # Path | RemotePath | str (a glob)
    sampling: str = "all"
    seed: int = 0
    format: str = ""  # jsonl, json, parquet, arrow, webdataset
    sha256: str = ""
    meta: dict = field(default_factory=dict)
    #: The files read, in order (one for JSON/JSONL; several for a folder, a glob or tar shards).
    files: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "format": self.format,
            "sampling": self.sampling,
            "seed": self.seed,
            "sha256": self.sha256,
        }

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in (self.files or [self.path]))


def files_sha256(files: list, sha256_file) -> str:
    """One file: its sha256; several: the sha256 of their names and sha256s, in order."""
    if len(files) == 1:
        return sha256_file(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{Path(str(f)).name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()
