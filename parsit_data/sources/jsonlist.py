"""A JSON list (``[{...}, {...}]``), streamed element by element without loading the file whole."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ijson

from parsit_data.format.fsio import open_input
from parsit_data.reasons import Reason
from parsit_data.records import Rejection
from parsit_data.sources.jsonl import _BOM, _TOO_DEEP, MAX_NESTING, _lone_surrogate_at, _unicode_rejection
from parsit_data.sources.raw import RawItem, SourceSpec


class _Malformed(Exception):
    pass


def _json_list_items(f, basic_parse=ijson.basic_parse) -> Iterator[Any]:
    """The elements of a top-level JSON list, built from the C parser's flat events.

    Not ``ijson.items``: its prefix strings make memory grow with the *square* of the nesting depth
    (a 200 KB ``[[[[...]]]]`` takes gigabytes). Here an element nested deeper than ``MAX_NESTING``
    is skipped without being built and comes out as ``_TOO_DEEP``; the elements after it are read.
    """
    from ijson.common import ObjectBuilder

    depth, builder, skipping = 0, None, False
    for event, val in basic_parse(f, use_float=True):
        if event in ("start_map", "start_array"):
            depth += 1
            if depth == 1:
                if event != "start_array":
                    raise _Malformed("the file is not a JSON list")
                continue
            if depth == 2:
                builder, skipping = ObjectBuilder(), False
            elif depth > MAX_NESTING + 1 and not skipping:
                builder, skipping = None, True
        elif event in ("end_map", "end_array"):
            depth -= 1
            if depth == 0:
                return
            if depth == 1:
                if skipping:
                    yield _TOO_DEEP
                else:
                    builder.event(event, val)
                    yield builder.value
                builder = None
                continue
        elif depth == 1:  # a scalar element
            yield val
            continue
        if not skipping:
            builder.event(event, val)


def _has_surrogate_escape(path: Path) -> bool:
    """Whether the file holds a *lone* ``\uD800``-``\uDFFF`` escape (a pair, an emoji, does not count).

    yajl, the fast C parser, silently turns a lone surrogate escape into ``?``: such a file is parsed
    with the pure-Python parser, which keeps it, so that the record is quarantined instead of altered.
    (An escaped backslash before ``ud800`` also matches: that file is only parsed more slowly.)
    """
    tail = b""
    with open_input(path) as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            if b"\\u" in chunk and _LONE_SURROGATE_ESCAPE.search(tail + chunk):
                return True
            tail = chunk[-12:]
    return False


_LONE_SURROGATE_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"  # a high one not followed by a low one
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")  # a low one not after a high one


#: What a stream parser says about a number it cannot read (NaN, Infinity, 1e400, a 5000-digit int).
_NUMBER_TROUBLE = re.compile(r"Unexpected symbol '(-?\d|NaN|-?Infinity)|numeric \(floating point\) overflow")


def _number_at_error(path: Path, message: str) -> bool:
    """Whether the pure-Python parser stopped on a number or NaN/Infinity (it names only the first
    character and the offset: the bytes there say more)."""
    m = re.search(r"Unexpected symbol '.*' at (\d+)$", message)
    if not m:
        return False
    with open_input(path) as f:
        skip = 3 if f.read(3) == _BOM else 0
        f.seek(int(m.group(1)) + skip)
        return re.match(rb"NaN|-?Infinity|-?\d", f.read(16)) is not None


class _SkipBOM:
    """A binary file whose leading UTF-8 byte order mark is not passed on to the parser."""

    def __init__(self, f):
        self._f, self._first = f, True

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if self._first and data:  # (parsers probe with read(0) first)
            self._first = False
            if len(data) < 3 and _BOM.startswith(data):
                data += self._f.read(3)
            if data.startswith(_BOM):
                data = data[3:] or self._f.read(n)
        return data


def read_json_list(spec: SourceSpec) -> Iterator[RawItem]:
    """Stream the elements of a top-level JSON list without loading the file whole.

    The fast C parser (yajl) refuses integers beyond 64 bits, which are valid JSON; from the element
    where it fails on, the pure-Python parser takes over, so no valid record is lost to it. A file
    with surrogate escapes is read with the pure-Python parser from the start (see
    :func:`_has_surrogate_escape`) and its elements are checked for lone surrogates.
    """
    index = -1
    check_unicode = _has_surrogate_escape(spec.path)
    backend = ijson.get_backend("python") if check_unicode else ijson
    while True:
        with open_input(spec.path) as f:
            try:
                parse = backend.basic_parse
                for i, value in enumerate(_json_list_items(_SkipBOM(f), parse)):
                    if i <= index:  # already yielded before the switch of parser
                        continue
                    index = i
                    if value is _TOO_DEEP:
                        yield RawItem(spec.name, index, "index", raw=None, rejection=Rejection(
                            Reason.INVALID_JSON, f"element {index} is nested deeper than {MAX_NESTING}"))
                    elif check_unicode and (where := _lone_surrogate_at(value)) is not None:
                        yield RawItem(spec.name, index, "index", value=value, rejection=_unicode_rejection(where))
                    else:
                        yield RawItem(spec.name, index, "index", value=value)
                return
            except (ijson.JSONError, UnicodeDecodeError, _Malformed) as exc:
                if backend is ijson and not isinstance(exc, UnicodeDecodeError):
                    # A 64-bit overflow is valid JSON the pure-Python parser reads; for anything else it
                    # says which symbol it could not read (yajl says only "invalid char"), for the reason.
                    backend = ijson.get_backend("python")
                    continue
                # The rest of the file cannot be parsed; say where it broke as one quarantined entry.
                if isinstance(exc, UnicodeDecodeError):
                    reason = Reason.NON_UTF8
                elif _NUMBER_TROUBLE.search(str(exc)) or _number_at_error(spec.path, str(exc)):
                    reason = Reason.NON_STANDARD_NUMBER
                else:
                    reason = Reason.INVALID_JSON
                yield RawItem(spec.name, index + 1, "index", raw=None,
                              rejection=Rejection(reason, f"the JSON list is malformed after element {index}: "
                                                          f"{str(exc)[:300]}"))
                return
