"""Typed records at the boundary: pydantic models for what comes from outside.

A raw record is validated into a :class:`Record` (normalised turns, images as a list) or rejected
with a :class:`Rejection` carrying a stable reason code (see :mod:`parsit_data.reasons`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]

#: Both spellings of a role, mapped to one.
ROLE_NAMES: dict[str, Role] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


@dataclass(frozen=True, slots=True)
class Turn:
    """One normalised turn (internal: built only by the validator, after it checked the raw turn)."""

    role: Role
    content: str


@dataclass(slots=True)
class Record:
    """A validated record: the normalised form every later stage works on (internal, not parsed)."""

    sample_id: str
    source: str
    position: int  # 1-based line (JSONL) or 0-based index (JSON list) in the source
    turns: list[Turn]
    images: list[str] = field(default_factory=list)


class QuarantineRecord(BaseModel):
    """One line of ``quarantine.jsonl``."""

    model_config = ConfigDict(extra="forbid")
    source: str
    line: int | None = Field(None, description="1-based line number, for JSONL sources")
    index: int | None = Field(None, description="0-based position, for JSON list sources")
    sample_id: str | None
    reason: str
    detail: str
    record: Any = Field(description="the original record, untouched, or the raw line when it was not valid JSON")


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str


class Reject(Exception):
    """Raised inside validation/tokenization to quarantine the current record."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.rejection = Rejection(reason, detail)
