"""The quarantine line writer: one line of ``quarantine.jsonl`` from a raw item and its rejection.

Used by the build (every rejection of a partition, :mod:`parsit_data.rows`) and by ``parsit-data
validate`` (:mod:`parsit_data.precheck`), so both write the same line for the same record. The line's
fields are those of :class:`parsit_data.records.QuarantineRecord`, in its order.
"""

from __future__ import annotations

import base64
import json
import re

from parsit_data.records import Rejection
from parsit_data.sources import EmbeddedImage, RawItem


def quarantine_line(item: RawItem, sample_id: str | None, rej: Rejection) -> str:
    """One line of ``quarantine.jsonl``: valid UTF-8 JSON on one line, whatever the record held.

    The record is kept losslessly: a line that is not UTF-8 also comes as its exact bytes
    (``record_b64``); a lone surrogate (only in ``invalid_unicode`` records) is written as its JSON
    escape, which ``json.loads`` reads back to the same string.
    """
    # The fields of QuarantineRecord, in its order, as a plain dict: pydantic's serializer (Rust) cannot
    # carry a lone surrogate, which an invalid_unicode record holds by definition.
    q = {
        "source": item.source,
        "line": item.position if item.kind == "line" else None,
        "index": item.position if item.kind == "index" else None,
        "sample_id": sample_id,
        "reason": rej.reason.value,
        "detail": rej.detail,
        "record": item.value if item.value is not None else item.raw,
    }
    if item.member is not None:
        q = {**{k: q[k] for k in ("source", "line", "index")}, "member": item.member,
             **{k: q[k] for k in ("sample_id", "reason", "detail", "record")}}
    if item.raw_bytes is not None:
        q["record_b64"] = base64.b64encode(item.raw_bytes).decode("ascii")
    line = json.dumps(q, ensure_ascii=False, default=_not_json)
    # Characters that str.splitlines() (and other readers) treat as line breaks stay escaped, so that
    # one rejected record is always exactly one line. They can only occur inside JSON strings here.
    line = line.translate(_LINE_BREAKS_ESCAPED)
    if not line.isascii() and _SURROGATE.search(line):
        line = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
    return line


def _not_json(v):
    """An embedded image is shown as where it is and its size; other bytes (a binary column) by size."""
    if isinstance(v, EmbeddedImage):
        return v.to_json()
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    raise TypeError(f"{type(v).__name__} is not JSON")


_LINE_BREAKS_ESCAPED = {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}  # json escapes < 0x20 itself
_SURROGATE = re.compile("[\ud800-\udfff]")
