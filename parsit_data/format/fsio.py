"""Build locations on any pyarrow filesystem: a local path stays a :class:`pathlib.Path`, a URI becomes a
:class:`RemotePath` with the small part of the ``Path`` API that the build and the trainer use.

Why a path-like object: the build code (out dir, shards, part files, manifest) is written against
``Path``; with :func:`location` choosing the kind once, the same code writes a local directory or a
bucket prefix, and a local path never goes through pyarrow at all (no behaviour change on disk).

Rules:

- ``scheme://...`` is a URI, opened with :func:`pyarrow.fs.FileSystem.from_uri` (``s3://``, ``gs://``,
  ``hdfs://``, ``abfs://`` where this pyarrow was built with them). A scheme pyarrow cannot open is an
  error at start (:class:`ParsitError`), never a local folder called ``s3:``. ``file://`` is local.
- A string that starts like a remote URI but is mangled (``s3:/bucket``, ``s3:bucket``: what
  ``Path("s3://b")`` makes of a URI) is refused too, for the same reason.
- Credentials, region and endpoint come only from the standard environment and config files of the
  store (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_PROFILE``,
  ``AWS_ENDPOINT_URL`` for S3-compatible stores: pyarrow >= 15 reads it). Parsit has no option for them,
  so they never reach a log line or the manifest; ``str(RemotePath)`` is the URI as given, without
  query parameters.

Commit protocol on object stores (docs/FORMAT.md): there is no rename, so every object is written with
one upload from a complete in-memory buffer (:meth:`RemotePath.write_bytes`); a store makes an object
visible only when its upload completes. Whatever an object is, it is trusted only through a marker
written after it that records its size and sha256 (a partition's part file for its shard, the manifest
for everything), and every reader verifies against that marker.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

from parsit_data.errors import ParsitError

log = logging.getLogger(__name__)

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: Schemes that name a remote store; ``s3:/x`` or ``s3:x`` (a URI that lost a slash) is refused, not a file.
_REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az", "azure", "http", "https", "ftp")
_MANGLED = re.compile(rf"^({'|'.join(_REMOTE_SCHEMES)}):(?!//)", re.I)
_CHUNK = 1 << 20

#: Attempts of one store operation (on top of the AWS SDK's own 3) before the error is raised.
RETRY_ATTEMPTS = int(os.environ.get("PARSIT_STORE_RETRIES", "8"))
RETRY_BASE_S = 0.1
RETRY_MAX_S = 5.0
#: What failed and was retried in this process, by kind ("slowdown", "connection", "server"): reported
#: by the build and the trainer's cache, read by tests.
RETRIES: Counter = Counter()
_RETRIES_LOCK = threading.Lock()

_TRANSIENT = (
    ("slowdown", re.compile(r"SLOW_?DOWN|SlowDown|503|Service ?Unavailable|THROTTL|Throttl|TooManyRequests|429", re.I)),
    ("connection", re.compile(r"connect|connection|curl|timed? ?out|timeout|reset by peer|broken pipe|"
                              r"network|socket|unexpected end|EOF|partial|NETWORK", re.I)),
    ("server", re.compile(r"INTERNAL_FAILURE|InternalError|\b50[0-4]\b", re.I)),
)


def transient_kind(exc: BaseException) -> str | None:
    """The kind of a store error worth retrying (throttling, a lost connection, a 5xx), else None."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return None
    if not isinstance(exc, OSError):
        return None
    text = str(exc)
    for kind, pattern in _TRANSIENT:
        if pattern.search(text):
            return kind
    return None


def retrying(what: str, fn: Callable, *args, attempts: int | None = None):
    """``fn(*args)``, retried with exponential backoff and jitter on transient store errors (each logged
    and counted in :data:`RETRIES`); a permanent error, or the last attempt's, is raised as it is."""
    attempts = RETRY_ATTEMPTS if attempts is None else attempts
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args)
        except OSError as exc:
            kind = transient_kind(exc)
            if kind is None or attempt == attempts:
                raise
            with _RETRIES_LOCK:
                RETRIES[kind] += 1
            delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempt - 1)) * (0.5 + random.random())
            log.warning("%s: %s (%s); retry %d of %d in %.2fs", what, kind, str(exc).splitlines()[0][:200],
                        attempt, attempts - 1, delay)
            time.sleep(delay)


def is_uri(location: str | Path) -> bool:
    return isinstance(location, str) and bool(_URI.match(location))


def location(where: str | Path, what: str = "location") -> Path | "RemotePath":
    """``where`` as a local :class:`Path` or a :class:`RemotePath`; a ParsitError for what cannot be opened."""
    if isinstance(where, (Path, RemotePath)):
        return where
    where = str(where)
    if _MANGLED.match(where):
        raise ParsitError(f"{what} {where!r} looks like a URI with a missing '/': write it as "
                          f"{where.split(':', 1)[0]}://BUCKET/PREFIX")
    m = _URI.match(where)
    if not m:
        return Path(where)
    scheme = m.group(1).lower()
    if scheme == "file":
        return Path(where[len("file://"):])
    opened = where
    if scheme == "s3" and "allow_delayed_open" not in where:
        # Delayed open: an object written with one write() goes up as ONE PutObject (atomic), not as a
        # multipart upload (three requests, and a partial object if it were completed after an error).
        opened = where + ("&" if "?" in where else "?") + "allow_delayed_open=true"
    try:
        fs, path = pafs.FileSystem.from_uri(opened)
    except pa_errors() as exc:
        raise ParsitError(f"{what} {where!r}: Parsit cannot open {scheme}:// URIs here ({exc}); use a local path "
                          "or a URI scheme that pyarrow supports (s3://, gs://, hdfs://, abfs://)") from None
    uri = where.split("?", 1)[0].rstrip("/")
    return RemotePath(fs, path.rstrip("/"), uri)


def pa_errors() -> tuple[type[BaseException], ...]:
    import pyarrow as pa

    return (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError)


@dataclass(frozen=True)
class _Stat:
    st_size: int


class RemotePath:
    """A key or key prefix on a pyarrow filesystem, with the ``Path`` methods Parsit uses.

    Deliberately not ``os.PathLike``: code that would ``open()`` it as a local file fails instead of
    writing a local folder named after the URI.
    """

    __slots__ = ("fs", "path", "uri")

    def __init__(self, fs: pafs.FileSystem, path: str, uri: str):
        self.fs, self.path, self.uri = fs, path, uri

    # -- naming ------------------------------------------------------------------------------------

    def __truediv__(self, rel: str | Path) -> "RemotePath":
        rel = str(rel).strip("/")
        return RemotePath(self.fs, f"{self.path}/{rel}", f"{self.uri}/{rel}")

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"RemotePath({self.uri!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __reduce__(self):  # pyarrow filesystems pickle (Ray ships a RemotePath to its workers)
        return (RemotePath, (self.fs, self.path, self.uri))

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rindex("."):] if "." in name.lstrip(".") else ""

    @property
    def stem(self) -> str:
        return self.name[: len(self.name) - len(self.suffix)] if self.suffix else self.name

    def is_absolute(self) -> bool:
        return True

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(self.fs, self.path.rsplit("/", 1)[0], self.uri.rsplit("/", 1)[0])

    def resolve(self) -> "RemotePath":
        return self

    def relative_key(self, child: "RemotePath") -> str | None:
        """``child``'s key below this prefix, or None when it is not below it."""
        prefix = self.path + "/"
        return child.path[len(prefix):] if child.path.startswith(prefix) else None

    # -- queries -----------------------------------------------------------------------------------

    def _info(self) -> pafs.FileInfo:
        return retrying(f"stat {self.uri}", self.fs.get_file_info, self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        # Object stores have no directories: a prefix "exists" once a key is under it; an empty one is usable.
        return self._info().type in (pafs.FileType.Directory, pafs.FileType.NotFound)

    def stat(self) -> _Stat:
        info = self._info()
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(self.uri)
        return _Stat(int(info.size))

    def iterdir(self) -> Iterator["RemotePath"]:
        sel = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        for info in retrying(f"list {self.uri}", self.fs.get_file_info, sel):
            yield RemotePath(self.fs, info.path, f"{self.uri}/{info.base_name}")

    # -- reading -----------------------------------------------------------------------------------

    def open(self, mode: str = "rb") -> BinaryIO:
        if mode != "rb":
            raise ValueError(f"RemotePath.open supports 'rb' only, not {mode!r}: write with write_bytes")
        try:
            return self.fs.open_input_stream(self.path)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if not self.exists():
                raise FileNotFoundError(self.uri) from exc
            raise

    def read_bytes(self) -> bytes:
        def read() -> bytes:
            with self.open() as f:
                return f.read()

        return retrying(f"read {self.uri}", read)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def sha256(self) -> str:
        def digest() -> str:
            h = hashlib.sha256()
            with self.open() as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            return h.hexdigest()

        return retrying(f"read {self.uri}", digest)

    # -- writing -----------------------------------------------------------------------------------

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to create on an object store (a prefix exists through its keys)."""

    def write_bytes(self, data: bytes) -> int:
        """One upload of the complete buffer: the object is visible only once it is whole (see module doc)."""
        def put() -> None:  # idempotent: the whole object again
            stream = self.fs.open_output_stream(self.path)
            stream.write(data)
            stream.close()

        retrying(f"write {self.uri}", put)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            retrying(f"delete {self.uri}", self.fs.delete_file, self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        """Delete every key under this prefix."""
        try:
            retrying(f"delete {self.uri}/", lambda: self.fs.delete_dir_contents(self.path, missing_dir_ok=True))
        except FileNotFoundError:
            pass


def rmtree(path: Path | RemotePath) -> None:
    """``shutil.rmtree(path, ignore_errors=True)`` for both kinds of location."""
    if isinstance(path, RemotePath):
        path.rmtree()
    else:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


class _RawObject(io.RawIOBase):
    """A pyarrow input stream as a raw Python stream, so that ``io.BufferedReader`` gives it lines."""

    def __init__(self, stream):
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._stream.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


def open_input(where: str | Path | RemotePath, what: str = "input", offset: int = 0) -> BinaryIO:
    """A buffered binary stream of a local file or an object: read in 1 MiB requests as it is consumed
    (streamed, never downloaded whole); lines and ``read(n)`` work on both. ``offset``: start there (an
    object is then opened for random access and read from that byte on)."""
    loc = location(where, what)
    if isinstance(loc, RemotePath):
        if offset:
            raw = retrying(f"open {loc}", loc.fs.open_input_file, loc.path)
            raw.seek(offset)
        else:
            raw = retrying(f"open {loc}", loc.open)
        return io.BufferedReader(_RawObject(raw), buffer_size=_CHUNK)
    f = open(loc, "rb")
    if offset:
        f.seek(offset)
    return f


def arrow_input(path: Path | RemotePath):
    """A pyarrow input for an Arrow IPC reader: a memory map of a local file, a stream of an object."""
    import pyarrow as pa

    return path.open("rb") if isinstance(path, RemotePath) else pa.memory_map(str(path))


def check_objects(root: RemotePath, entries: list[tuple[str, int]]) -> tuple[RemotePath, ...]:
    """The objects ``root/rel`` for ``(rel, bytes)`` entries, each checked to exist with that size (one
    listing per folder, not one request per object) and to stay under ``root``; a ParsitError otherwise."""
    objs = []
    for rel, _ in entries:
        if rel.startswith("/") or ".." in rel.split("/") or "\\" in rel:
            raise ParsitError(f"{root}/manifest.json lists {rel!r} outside the build")
        objs.append(root / rel)
    present: dict[str, RemotePath] = {}
    for folder in {o.parent.uri: o.parent for o in objs}.values():
        present.update({p.uri: p for p in folder.iterdir()})
    for obj, (rel, size) in zip(objs, entries, strict=True):
        if obj.uri not in present:
            raise ParsitError(f"shard {rel} of build {root} is missing: restore it or rebuild {root}")
        got = present[obj.uri].stat().st_size
        if got != size:
            raise ParsitError(f"shard {rel} of build {root} has {got} bytes, the manifest says {size}: the object "
                              "was replaced after the build; restore it or rebuild")
    return tuple(objs)
