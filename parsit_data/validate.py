"""Record validation: structure, roles, turns, placeholders, control tokens.

``check_record`` turns one raw JSON value into a :class:`Record` or raises :class:`Reject` with a
reason code and a detail that names the turn. Checks that need the filesystem live in
:mod:`parsit_data.images`; checks that need token counts live in :mod:`parsit_data.tokenize`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from parsit_data.constants import IMAGE_PLACEHOLDER
from parsit_data.records import ROLE_NAMES, Record, Reject, Turn

_RECORD_KEYS_IGNORED = {"id", "image", "images", "conversations", "messages"}


@dataclass(frozen=True)
class ValidationOptions:
    #: Literal strings that must never appear in text (template and tokenizer control tokens).
    control_tokens: frozenset[str] = field(default_factory=frozenset)
    #: Insert a missing <image> at the start of the first user turn instead of quarantining.
    fix_missing_placeholder: bool = False


@functools.lru_cache(maxsize=16)
def _control_pattern(tokens: frozenset[str]) -> re.Pattern | None:
    """One regex for all control tokens: a single pass over the text instead of one per token."""
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def sample_id_of(value: Any, source: str, position: int) -> str:
    """The record's own id when it has one, else a stable id from source and position."""
    if isinstance(value, dict):
        rid = value.get("id")
        if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid) != "":
            return str(rid)
    return f"{source}:{position}"


def _turn(i: int, t: Any) -> Turn:
    if not isinstance(t, dict):
        raise Reject("bad_turn", f"turn {i} is {type(t).__name__}, expected an object")
    if "from" in t or "value" in t:
        role_key, text_key = "from", "value"
    elif "role" in t or "content" in t:
        role_key, text_key = "role", "content"
    else:
        raise Reject("bad_turn", f"turn {i} has neither from/value nor role/content")
    extra = set(t) - {role_key, text_key}
    if extra:
        raise Reject("bad_turn", f"turn {i} has unexpected fields {sorted(extra)}")
    role, text = t.get(role_key), t.get(text_key)
    if not isinstance(role, str):
        raise Reject("bad_turn", f"turn {i}: '{role_key}' must be a string")
    if not isinstance(text, str):
        raise Reject("bad_turn", f"turn {i}: '{text_key}' must be a string, got {type(text).__name__}")
    norm = ROLE_NAMES.get(role.strip().lower())
    if norm is None:
        raise Reject("unknown_role", f"turn {i}: role {role!r} is not one of human/gpt/system/user/assistant")
    if not text.strip():
        raise Reject("empty_turn", f"turn {i} ({role}) is empty or whitespace")
    return Turn(norm, text)


def _images(value: dict) -> list[str]:
    img = value.get("image", value.get("images"))
    if img is None:
        return []
    if isinstance(img, str):
        return [img]
    if isinstance(img, list) and all(isinstance(x, str) for x in img):
        return list(img)
    raise Reject("bad_field", f"'image' must be a string or a list of strings, got {type(img).__name__}")


def check_record(value: Any, source: str, position: int, opts: ValidationOptions) -> tuple[Record, list[str]]:
    """Validate one raw record. Returns the record and a list of notes (fixes applied, for the report)."""
    notes: list[str] = []
    if not isinstance(value, dict):
        raise Reject("not_an_object", f"the record is a {type(value).__name__}, expected a JSON object")
    if "video" in value:
        raise Reject("video_unsupported", "the record has a 'video' field; video samples are not supported")
    convs = value.get("conversations", value.get("messages"))
    if convs is None:
        raise Reject("missing_conversations", "the record has no 'conversations' list")
    if not isinstance(convs, list):
        raise Reject("missing_conversations", f"'conversations' is a {type(convs).__name__}, expected a list")
    if not convs:
        raise Reject("empty_conversation", "'conversations' is empty")
    turns = [_turn(i, t) for i, t in enumerate(convs)]

    # Roles: an optional leading system turn, then user/assistant alternating, starting with user.
    body = turns[1:] if turns[0].role == "system" else turns
    if not body:
        raise Reject("no_assistant_turn", "the conversation has only a system turn")
    for i, t in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if t.role != expected:
            at = i + (len(turns) - len(body))
            raise Reject("not_alternating", f"turn {at} is {t.role}, expected {expected}")
    if not any(t.role == "assistant" for t in body):
        raise Reject("no_assistant_turn", "the conversation has no assistant turn")

    pattern = _control_pattern(opts.control_tokens)
    if pattern is not None:
        for i, t in enumerate(turns):
            m = pattern.search(t.content)
            if m:
                raise Reject("special_token_in_text", f"turn {i} contains the control token {m.group(0)!r}")

    images = _images(value)
    n_placeholders = sum(t.content.count(IMAGE_PLACEHOLDER) for t in turns)
    if images and n_placeholders == 0 and opts.fix_missing_placeholder and len(images) == 1:
        first_user = next(i for i, t in enumerate(turns) if t.role == "user")
        fixed = Turn(role="user", content=f"{IMAGE_PLACEHOLDER}\n{turns[first_user].content}")
        turns[first_user] = fixed
        n_placeholders = 1
        notes.append("placeholder_inserted")
    if n_placeholders != len(images):
        raise Reject(
            "image_placeholder_mismatch",
            f"{n_placeholders} <image> placeholder(s) in the text but {len(images)} image(s)",
        )
    if any(IMAGE_PLACEHOLDER in t.content for t in turns if t.role != "user"):
        raise Reject("image_placeholder_mismatch", "an <image> placeholder is outside a user turn")

    record = Record(
        sample_id=sample_id_of(value, source, position),
        source=source,
        position=position,
        turns=turns,
        images=images,
    )
    return record, notes
