"""JSONL: one record a line, streamed; every line becomes a :class:`RawItem`, the ones that are not valid
JSON or not UTF-8 included (they carry the rejection), so that ``read = kept + quarantined`` holds.

Also the JSON decoding rules shared with the JSON-list reader (:mod:`.jsonlist`): non-standard numbers,
lone surrogates, nesting depth.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from parsit_data.format.fsio import open_input
from parsit_data.reasons import Reason
from parsit_data.records import Rejection
from parsit_data.sources.raw import RawItem, SourceSpec

class _NonStandardNumber(ValueError):
    pass


def _refuse_constant(name: str):
    raise _NonStandardNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    x = float(text)
    if x in (_INF, -_INF):
        raise _NonStandardNumber(f"{text[:40]} is beyond the range of a double (it would read as Infinity)")
    return x


_INF = float("inf")
#: ``json.loads`` that refuses what is not standard JSON or not safely representable (see
#: docs/REASONS.md, ``non_standard_number``). The hooks run only for floats and NaN/Infinity, which
#: LLaVA records rarely hold: the scanner stays on its fast C path for strings, ints and structure.
_decode = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant).decode
_BOM = b"\xef\xbb\xbf"
#: Only a ``\uD800``-``\uDFFF`` escape can put a surrogate into a parsed string (raw bytes that would
#: encode one are not valid UTF-8 and fail before parsing); lines without one skip the check.
_SURROGATE_ESCAPES = (b"\\ud", b"\\uD")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate_at(value: Any) -> str | None:
    """Where (``record.conversations[0].value``, ``a key in record``) the first lone surrogate sits, or None."""
    stack: list[tuple[Any, str]] = [(value, "record")]
    search = _SURROGATE.search
    while stack:
        v, where = stack.pop()
        if isinstance(v, str):
            if search(v):
                return where
        elif isinstance(v, dict):
            for k in v:
                if search(k):
                    return f"a key of {where}"
            stack.extend((x, f"{where}.{k}") for k, x in reversed(v.items()))
        elif isinstance(v, list):
            stack.extend((x, f"{where}[{i}]") for i, x in reversed(list(enumerate(v))))
    return None


def _unicode_rejection(where: str) -> Rejection:
    return Rejection(Reason.INVALID_UNICODE, f"{where} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), "
                                             "which is not a character and cannot be written as UTF-8")


def read_jsonl(spec: SourceSpec) -> Iterator[RawItem]:
    """One item per non-blank line (``\n``-separated; ``\r\n`` works, a bare ``\r`` or U+2028 is no break).

    A UTF-8 byte order mark at the start of a line (a file saved by Excel, files concatenated with
    ``cat``) is not part of the record and is skipped.
    """
    with open_input(spec.path) as f:
        for lineno, line in enumerate(f, start=1):
            if line.startswith(_BOM):
                line = line[3:]
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                body = line.rstrip(b"\r\n")
                yield RawItem(spec.name, lineno, "line", raw=body.decode("utf-8", errors="backslashreplace"),
                              raw_bytes=body, rejection=Rejection(Reason.NON_UTF8, f"line {lineno}: {exc}"))
                continue
            try:
                value = _decode(text)
            except json.JSONDecodeError as exc:
                yield RawItem(spec.name, lineno, "line", raw=text.rstrip("\r\n"),
                              rejection=Rejection(Reason.INVALID_JSON, f"line {lineno}: {exc}"))
                continue
            except ValueError as exc:  # NaN/Infinity/1e400 (our hooks), or an int over 4300 digits (int())
                yield RawItem(spec.name, lineno, "line", raw=text.rstrip("\r\n"),
                              rejection=Rejection(Reason.NON_STANDARD_NUMBER, f"line {lineno}: {exc}"))
                continue
            except RecursionError:  # hostile nesting ([[[[...]]]]) must not end the build
                value = _TOO_DEEP
            if value is _TOO_DEEP or (text.count("[") + text.count("{") > MAX_NESTING and _too_deep(value)):
                yield RawItem(spec.name, lineno, "line", raw=text.rstrip("\r\n"),
                              rejection=Rejection(Reason.INVALID_JSON, f"line {lineno}: nested deeper than {MAX_NESTING}"))
                continue
            if (_SURROGATE_ESCAPES[0] in line or _SURROGATE_ESCAPES[1] in line) and \
                    (where := _lone_surrogate_at(value)) is not None:
                yield RawItem(spec.name, lineno, "line", value=value, rejection=_unicode_rejection(where))
                continue
            yield RawItem(spec.name, lineno, "line", value=value)


#: Deepest nesting of arrays/objects accepted in one record. Real records are ~4 deep; hostile ones
#: (``[[[[...]]]]``) would otherwise hit recursion limits when parsed or written to the quarantine.
MAX_NESTING = 200
_TOO_DEEP = object()


def _too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            if d > limit:
                return True
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def parse_document(data: bytes, where: str) -> tuple[Any, Rejection | None, str | None]:
    """One JSON document (a tar member) under the rules of a JSONL line: ``(value, rejection, raw text)``."""
    if data.startswith(_BOM):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, Rejection(Reason.NON_UTF8, f"{where}: {exc}"), data.decode("utf-8", "backslashreplace")
    try:
        value = _decode(text)
    except json.JSONDecodeError as exc:
        return None, Rejection(Reason.INVALID_JSON, f"{where}: {exc}"), text
    except ValueError as exc:
        return None, Rejection(Reason.NON_STANDARD_NUMBER, f"{where}: {exc}"), text
    except RecursionError:
        value = _TOO_DEEP
    if value is _TOO_DEEP or (text.count("[") + text.count("{") > MAX_NESTING and _too_deep(value)):
        return None, Rejection(Reason.INVALID_JSON, f"{where}: nested deeper than {MAX_NESTING}"), text
    if (_SURROGATE_ESCAPES[0] in data or _SURROGATE_ESCAPES[1] in data) and \
            (at := _lone_surrogate_at(value)) is not None:
        return value, _unicode_rejection(at), None
    return value, None, None


def count_jsonl(spec: SourceSpec) -> int:
    """The records :func:`read_jsonl` yields, counted on bytes without parsing: its non-blank lines (the
    same rule: a leading byte order mark is not content). The progress estimate and the sampling
    percentages use this count."""
    n = 0
    with open_input(spec.path) as f:
        for line in f:
            if line.startswith(_BOM):
                line = line[3:]
            if line.strip():
                n += 1
    return n
