"""Reading inputs: JSON lists (streamed), JSONL, and LLaVA-NeXT YAML mixtures with seeded sampling.

Every record read comes out as a :class:`RawItem`, including the ones that are not valid JSON or not
UTF-8 (they carry the rejection), so that ``read = kept + quarantined`` holds for every source.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ijson
import yaml

from parsit_data.errors import ParsitError
from parsit_data.reasons import Reason
from parsit_data.records import Rejection
from parsit_data.format import sha256_file
from parsit_data.format.fsio import location, open_input

_STRATEGY = re.compile(r"^(all|first:\d+%?|end:\d+%?|random:\d+%?)$")


@dataclass(frozen=True)
class RawItem:
    """One record as read: parsed ``value``, or ``rejection`` with the ``raw`` text."""

    source: str
    position: int
    kind: str  # "line" (1-based, JSONL) or "index" (0-based, JSON list)
    value: Any = None
    raw: str | None = None
    rejection: Rejection | None = None
    #: The exact bytes of a line that is not valid UTF-8 (kept losslessly in the quarantine).
    raw_bytes: bytes | None = None


@dataclass
class SourceSpec:
    """One input file and how to sample it."""

    name: str
    path: Path
    sampling: str = "all"
    seed: int = 0
    format: str = ""  # "jsonl" or "json"
    sha256: str = ""
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "format": self.format,
            "sampling": self.sampling,
            "seed": self.seed,
            "sha256": self.sha256,
        }


def _detect_format(path: Path) -> str:
    """``json`` when the first non-blank byte (after a byte order mark) opens a list, else ``jsonl``."""
    with open_input(path) as f:
        first = True
        while True:
            chunk = f.read(4096)
            if not chunk:
                return "jsonl"
            if first and chunk.startswith(_BOM):
                chunk = chunk[3:]
            first = False
            stripped = chunk.lstrip()
            if stripped:
                return "json" if stripped[:1] == b"[" else "jsonl"


def expand_inputs(inputs: list[str | Path], seed: int = 0) -> list[SourceSpec]:
    """Turn CLI inputs (JSON, JSONL or YAML mixture files) into source specs, in order."""
    specs: list[SourceSpec] = []
    for inp in inputs:
        p = location(inp, "input")  # a local file, or a URI (s3://...): streamed from the store
        if not p.is_file():
            raise ParsitError(f"input {p} does not exist (or is not a file)")
        if p.suffix.lower() in {".yaml", ".yml"}:
            specs.extend(_read_mixture(p, seed))
        else:
            specs.append(SourceSpec(name=p.stem, path=p, sampling="all", seed=seed))
    seen: dict[str, int] = {}
    for i, s in enumerate(specs):
        # Unique, stable source names: a second "train.jsonl" becomes "train-2".
        n = seen.get(s.name, 0) + 1
        seen[s.name] = n
        if n > 1:
            s.name = f"{s.name}-{n}"
        s.seed = seed * 1_000_003 + i
        s.format = _detect_format(s.path)
        s.sha256 = sha256_file(s.path)
    return specs


def _read_mixture(path: Path, seed: int) -> list[SourceSpec]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ParsitError(f"{path}: not a readable YAML file: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), list):
        raise ParsitError(f"{path}: a mixture file needs a top-level 'datasets:' list")
    out: list[SourceSpec] = []
    problems: list[str] = []
    for i, entry in enumerate(doc["datasets"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("json_path"), str):
            problems.append(f"datasets[{i}]: needs a 'json_path' string")
            continue
        strategy = str(entry.get("sampling_strategy", "all")).strip()
        if not _STRATEGY.match(strategy):
            problems.append(
                f"datasets[{i}]: sampling_strategy {strategy!r} is not one of all, first:N, first:N%, "
                "end:N, end:N%, random:N, random:N%"
            )
            continue
        jp = location(entry["json_path"], f"datasets[{i}].json_path")
        if not jp.is_absolute():
            jp = path.parent / jp
        if not jp.is_file():
            problems.append(f"datasets[{i}]: {jp} does not exist")
            continue
        name = str(entry.get("name") or jp.stem)
        out.append(SourceSpec(name=name, path=jp, sampling=strategy, meta={"mixture": str(path)}))
    if problems:
        raise ParsitError(f"{path}: " + "; ".join(problems))
    return out


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


def _iter_jsonl(spec: SourceSpec) -> Iterator[RawItem]:
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


def _iter_json_list(spec: SourceSpec) -> Iterator[RawItem]:
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


def _iter_all(spec: SourceSpec) -> Iterator[RawItem]:
    return _iter_json_list(spec) if spec.format == "json" else _iter_jsonl(spec)


def _count(spec: SourceSpec) -> int:
    return sum(1 for _ in _iter_all(spec))


def iter_source(spec: SourceSpec) -> Iterator[RawItem]:
    """The records of one source after its sampling strategy, in input order."""
    strategy = spec.sampling
    if strategy == "all":
        yield from _iter_all(spec)
        return
    kind, _, amount = strategy.partition(":")
    total = _count(spec) if amount.endswith("%") else None
    n = int(amount.rstrip("%"))
    if total is not None:
        n = int(total * n / 100)  # LLaVA-NeXT rounds down the same way
    if kind == "first":
        for i, item in enumerate(_iter_all(spec)):
            if i >= n:
                return
            yield item
    elif kind == "end":
        total = _count(spec) if total is None else total
        start = max(total - n, 0)
        for i, item in enumerate(_iter_all(spec)):
            if i >= start:
                yield item
    else:  # random: a seeded choice of records, kept in input order
        total = _count(spec) if total is None else total
        chosen = set(random.Random(spec.seed).sample(range(total), min(n, total)))
        for i, item in enumerate(_iter_all(spec)):
            if i in chosen:
                yield item
