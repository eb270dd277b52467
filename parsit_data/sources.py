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
from parsit_data.records import Rejection
from parsit_data.format import sha256_file

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
    """``json`` when the first non-blank byte opens a list, else ``jsonl``."""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(4096)
            if not chunk:
                return "jsonl"
            stripped = chunk.lstrip()
            if stripped:
                return "json" if stripped[:1] == b"[" else "jsonl"


def expand_inputs(inputs: list[str | Path], seed: int = 0) -> list[SourceSpec]:
    """Turn CLI inputs (JSON, JSONL or YAML mixture files) into source specs, in order."""
    specs: list[SourceSpec] = []
    for inp in inputs:
        p = Path(inp)
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
        jp = Path(entry["json_path"])
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


def _iter_jsonl(spec: SourceSpec) -> Iterator[RawItem]:
    with open(spec.path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raw = line.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
                yield RawItem(spec.name, lineno, "line", raw=raw, rejection=Rejection("non_utf8", str(exc)))
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RawItem(spec.name, lineno, "line", raw=text.rstrip("\r\n"),
                              rejection=Rejection("invalid_json", f"line {lineno}: {exc}"))
                continue
            except RecursionError:  # hostile nesting ([[[[...]]]]) must not end the build
                value = _TOO_DEEP
            if value is _TOO_DEEP or (text.count("[") + text.count("{") > MAX_NESTING and _too_deep(value)):
                yield RawItem(spec.name, lineno, "line", raw=text.rstrip("\r\n"),
                              rejection=Rejection("invalid_json", f"line {lineno}: nested deeper than {MAX_NESTING}"))
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


def _iter_json_list(spec: SourceSpec) -> Iterator[RawItem]:
    """Stream the elements of a top-level JSON list without loading the file whole.

    The fast C parser (yajl) refuses integers beyond 64 bits, which are valid JSON; from the element
    where that happens on, the pure-Python parser takes over, so no valid record is lost to it.
    """
    index = -1
    backend = ijson
    while True:
        with open(spec.path, "rb") as f:
            try:
                parse = backend.basic_parse
                for i, value in enumerate(_json_list_items(f, parse)):
                    if i <= index:  # already yielded before the switch of parser
                        continue
                    index = i
                    if value is _TOO_DEEP:
                        yield RawItem(spec.name, index, "index", raw=None, rejection=Rejection(
                            "invalid_json", f"element {index} is nested deeper than {MAX_NESTING}"))
                    else:
                        yield RawItem(spec.name, index, "index", value=value)
                return
            except (ijson.JSONError, UnicodeDecodeError, _Malformed) as exc:
                if "integer overflow" in str(exc) and backend is ijson:
                    backend = ijson.get_backend("python")
                    continue
                # The rest of the file cannot be parsed; say where it broke as one quarantined entry.
                reason = "non_utf8" if isinstance(exc, UnicodeDecodeError) else "invalid_json"
                yield RawItem(spec.name, index + 1, "index", raw=None,
                              rejection=Rejection(reason, f"the JSON list is malformed after element {index}: {exc}"))
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
