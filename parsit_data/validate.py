"""Record validation: structure, roles, turns, placeholders, control tokens; then the images.

``check_record`` turns one raw JSON value into a :class:`Record` or raises :class:`Reject` with a
stable reason code and a detail that names the turn. Structure and types are the pydantic model
:class:`~parsit_data.records.InputRecord` (whose JSON Schema users can check against); its errors are
mapped to reason codes here. What a schema cannot say (alternation, whitespace-only text, placeholder
count, control tokens) is checked after it.

``check_item`` is the one per-record entry point: the build (:mod:`parsit_data.pipeline`) and
``parsit-data validate`` (:mod:`parsit_data.precheck`) both call it, so they cannot disagree. Checks
that need token counts (``overlong``) live in the pipeline; ``duplicate_id`` needs the whole build and
is marked by partitioning (:func:`parsit_data.partition.iter_partitions`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from parsit_data.format import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from parsit_data.images import ImageInfo, ImageOptions, LoadedImage, inspect_image, load_image
from parsit_data.records import FromValueTurn, InputRecord, Record, Reject, Turn
from parsit_data.sources import RawItem
from parsit_data.sources.normalize import normalize, with_embedded


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


def control_tokens_of(template, tokenizer=None) -> frozenset[str]:
    """The strings text may not contain: the template's control tokens and the tokenizer's specials.

    A literal ``<|im_end|>`` in a record would otherwise either be tokenized as the control token (a
    turn boundary the author never meant) or, split by the BPE, teach the model to spell it.

    The image placeholder ``<image>`` is never one: the encoder splits it out of the text before
    tokenizing (it becomes the -200 placeholder id), even where the tokenizer has it as an added special
    token, as every llava-hf processor's tokenizer does.
    """
    tokens = set(template.control_tokens)
    if tokenizer is not None:
        tokens |= {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    return frozenset(t for t in tokens if t and t not in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER))


def sample_id_of(value: Any, source: str, position: int) -> str:
    """The record's own id when it has one, else a stable id from source and position."""
    if isinstance(value, dict):
        rid = value.get("id")
        if isinstance(rid, str):
            # (an id holding a lone surrogate is not text: such a record is quarantined as
            # invalid_unicode, under its position, so that nothing downstream has to write it)
            if rid and (rid.isascii() or _SURROGATE.search(rid) is None):
                return rid
        elif isinstance(rid, int) and not isinstance(rid, bool):
            return str(rid)  # at most 4300 digits: longer ones are non_standard_number when read
    return f"{source}:{position}"


_SURROGATE = re.compile("[\ud800-\udfff]")


def _short(v: Any, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _reject_from(exc: ValidationError) -> Reject:
    """Map the first pydantic error (errors come in field order) to a reason code."""
    e = exc.errors(include_url=False)[0]
    loc, typ, msg = e["loc"], e["type"], e["msg"]
    top = loc[0] if loc else ""
    if top in ("conversations", "messages"):
        if len(loc) == 1:
            if typ == "too_short":
                return Reject("empty_conversation", f"'{top}' is an empty list")
            if typ == "missing":
                return Reject("missing_conversations", "the record has no 'conversations' list")
            return Reject("missing_conversations",
                          f"'{top}' is {type(e['input']).__name__}, expected a list of turns")
        i = loc[1]
        if typ == "bad_turn":
            return Reject("bad_turn", f"turn {i} is {_short(e['input'])}: expected an object with from/value "
                                      "(or role/content) strings")
        key = loc[3] if len(loc) > 3 else "?"
        if typ == "literal_error" and key in ("from", "role") and len(loc) == 4:
            allowed = "human/gpt/system" if key == "from" else "user/assistant/system"
            return Reject("unknown_role", f"turn {i}: {key} {_short(e['input'])} is not one of {allowed}")
        if typ == "extra_forbidden":
            return Reject("bad_turn", f"turn {i} has an unexpected field {key!r} (turns hold from/value or "
                                      "role/content only)")
        if typ == "missing":
            return Reject("bad_turn", f"turn {i} has no {key!r}")
        return Reject("bad_turn", f"turn {i}: {key!r}: {msg} (got {type(e['input']).__name__})")
    if top in ("image", "images"):
        return Reject("bad_field", f"'{top}' must be a string or a list of strings, got {_short(e['input'])}")
    if top in ("video", "videos"):
        return Reject("bad_field", f"'{top}' must be a string (one video path), got {_short(e['input'])}")
    if top == "id":
        return Reject("bad_field", f"'id' must be a string or an integer, got {_short(e['input'])}")
    return Reject("bad_field", f"{'.'.join(map(str, loc)) or 'record'}: {msg}")  # not reached by today's model


def check_record(value: Any, source: str, position: int, opts: ValidationOptions) -> tuple[Record, list[str]]:
    """Validate one raw record. Returns the record and a list of notes (fixes applied, for the report)."""
    notes: list[str] = []
    if not isinstance(value, dict):
        raise Reject("not_an_object", f"the record is a {type(value).__name__}, expected a JSON object")
    original = value
    value, embedded = normalize(value)  # chat messages with content parts; embedded images set aside
    try:
        rec = InputRecord.model_validate(value)
    except ValidationError as exc:
        raise _reject_from(exc) from None

    turns = [Turn(t.role, t.text) for t in rec.conversations]
    for i, (raw, t) in enumerate(zip(rec.conversations, turns)):
        if not t.content.strip():
            said = raw.from_ if isinstance(raw, FromValueTurn) else raw.role
            raise Reject("empty_turn", f"turn {i} ({said}) is empty or whitespace")

    # Roles: an optional leading system turn, then user/assistant alternating, starting with user.
    # Ending on a user turn is fine: that turn is simply not supervised.
    first = 1 if turns[0].role == "system" else 0
    body = turns[first:]
    if not body:
        raise Reject("no_assistant_turn", "the conversation has only a system turn")
    for i, t in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if t.role != expected:
            raise Reject("not_alternating", f"turn {i + first} is {t.role}, expected {expected}")
    if len(body) < 2:
        raise Reject("no_assistant_turn", "the conversation has no assistant turn")

    pattern = _control_pattern(opts.control_tokens)
    if pattern is not None:
        for i, t in enumerate(turns):
            m = pattern.search(t.content)
            if m:
                raise Reject("special_token_in_text", f"turn {i} contains the control token {m.group(0)!r}")

    img = rec.image
    if rec.video is not None and not images_given(img):  # LLaVA-Video: the one <image> stands for the video
        turns = video_from_image_placeholder(turns)
    images = with_embedded([] if img is None else [img] if isinstance(img, str) else list(img), embedded)
    n_placeholders = sum(t.content.count(IMAGE_PLACEHOLDER) for t in turns)
    if images and n_placeholders == 0 and opts.fix_missing_placeholder and len(images) == 1:
        first_user = next(i for i, t in enumerate(turns) if t.role == "user")
        turns[first_user] = Turn(role="user", content=f"{IMAGE_PLACEHOLDER}\n{turns[first_user].content}")
        n_placeholders = 1
        notes.append("placeholder_inserted")
    if n_placeholders != len(images):
        raise Reject(
            "image_placeholder_mismatch",
            f"{n_placeholders} <image> placeholder(s) in the text but {len(images)} image(s)",
        )
    if any(IMAGE_PLACEHOLDER in t.content for t in turns if t.role != "user"):
        raise Reject("image_placeholder_mismatch", "an <image> placeholder is outside a user turn")
    if rec.video is not None or any(VIDEO_PLACEHOLDER in t.content for t in turns):
        turns = check_video_placeholder(turns, rec.video, bool(images))

    record = Record(
        sample_id=sample_id_of(original, source, position),
        source=source,
        position=position,
        turns=turns,
        images=images,
        video=rec.video,
    )
    return record, notes


def images_given(img) -> bool:
    return img is not None and img != []


def video_from_image_placeholder(turns: list[Turn]) -> list[Turn]:
    """A record with a video and no images (LLaVA-NeXT / LLaVA-Video data) marks the video with ``<image>``:
    its single ``<image>`` becomes ``<video>`` (with none, or more than one, the counts below refuse it)."""
    n = sum(t.content.count(IMAGE_PLACEHOLDER) for t in turns)
    if n != 1 or any(VIDEO_PLACEHOLDER in t.content for t in turns):
        return turns
    return [Turn(t.role, t.content.replace(IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)) for t in turns]


def check_video_placeholder(turns: list[Turn], video: str | None, has_images: bool) -> list[Turn]:
    """One ``<video>`` in a user turn for the record's video; none without one."""
    n = sum(t.content.count(VIDEO_PLACEHOLDER) for t in turns)
    if video is None:
        raise Reject("video_placeholder_mismatch", f"{n} {VIDEO_PLACEHOLDER} placeholder(s) in the text but the "
                                                   "record has no video")
    if n != 1:
        hint = "" if n else (" (with images beside the video, mark the video with <video>)" if has_images else "")
        raise Reject("video_placeholder_mismatch", f"{n} {VIDEO_PLACEHOLDER} placeholder(s) in the text for one "
                                                   f"video{hint}")
    if any(VIDEO_PLACEHOLDER in t.content for t in turns if t.role != "user"):
        raise Reject("video_placeholder_mismatch", "the video placeholder is outside a user turn")
    return turns


def check_item(item: RawItem, vopts: ValidationOptions, iopts: ImageOptions, *, load: bool = True
               ) -> tuple[Record, list[LoadedImage] | list[ImageInfo], list[str]]:
    """Every check of one item that needs no tokenizer; raises :class:`Reject`.

    ``load=True`` (the build) reads each image's bytes for the shard; ``load=False`` (``validate``)
    runs the same checks on the open file without keeping its bytes.
    """
    if item.rejection is not None:  # not JSON, not UTF-8, or a duplicate id: decided upstream
        raise Reject(item.rejection.reason, item.rejection.detail)
    record, notes = check_record(item.value, item.source, item.position, vopts)
    fn = load_image if load else inspect_image
    images = [fn(p, iopts) for p in record.images]
    return record, images, notes
