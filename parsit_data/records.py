"""Typed records at the boundary: pydantic models for what comes from outside and what goes out.

Input side: :class:`InputRecord` is the record as users write it (LLaVA's ``from``/``value`` turns, the
``role``/``content`` spelling, or ``content`` as a list of parts); its JSON Schema is
``schemas/sample.schema.json``. Validation
(:mod:`parsit_data.validate`) runs this model first for structure and types, then the checks a schema
cannot express (alternation, placeholders, control tokens), and produces a normalised :class:`Record`
or raises :class:`Reject` with a stable reason code (see :mod:`parsit_data.reasons`).

Output side: :class:`QuarantineRecord` is one line of ``quarantine.jsonl``
(``schemas/quarantine.schema.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Discriminator, Field, Tag

from parsit_data.reasons import Reason

Role = Literal["system", "user", "assistant"]

#: Both spellings of a role, mapped to one.
ROLE_NAMES: dict[str, Role] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


# --- input: the record as written ------------------------------------------------------------------


class FromValueTurn(BaseModel):
    """A turn in LLaVA's spelling: ``{"from": "human" | "gpt" | "system", "value": str}``."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    from_: Literal["human", "gpt", "system"] = Field(alias="from", description="who speaks")
    value: str = Field(description="the text; each '<image>' is one image placeholder")

    @property
    def role(self) -> Role:
        return ROLE_NAMES[self.from_]

    @property
    def text(self) -> str:
        return self.value


class RoleContentTurn(BaseModel):
    """A turn in the chat-API spelling: ``{"role": "user" | "assistant" | "system", "content": str}``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["user", "assistant", "system"] = Field(description="who speaks")
    content: str = Field(description="the text; each '<image>' is one image placeholder")

    @property
    def text(self) -> str:
        return self.content


class TextPart(BaseModel):
    """A text part: ``{"type": "text", "text": str}``, used exactly as written."""

    model_config = ConfigDict(extra="allow", strict=True, title="TextPart")
    type: Literal["text"]
    text: str = Field(description="the text, as written (a literal '<image>' in it is refused: use an image part)")


class ImagePart(BaseModel):
    """An image part: ``{"type": "image"}`` (the next image of the record's ``images``) or with the image
    itself under ``image``, ``path`` or ``url``. It means ``<image>\\n`` in the LLaVA spelling."""

    model_config = ConfigDict(extra="allow", strict=True, title="ImagePart")
    type: Literal["image"]
    image: str | None = Field(None, description="this part's image (a path under the image root)")
    path: str | None = Field(None, description="another name of 'image'")
    url: str | None = Field(None, description="another name of 'image'")


class VideoPart(BaseModel):
    """A video part: ``{"type": "video", ...}`` (what the build does with it: docs/FORMATS.md)."""

    model_config = ConfigDict(extra="allow", strict=True, title="VideoPart")
    type: Literal["video"]


ContentPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class RolePartsTurn(BaseModel):
    """A turn in the chat spelling with content parts (TRL, SmolVLM, Qwen-VL, the Hugging Face hub):
    ``{"role": ..., "content": [{"type": "image"}, {"type": "text", "text": "..."}]}``. The normaliser
    (:mod:`parsit_data.sources.normalize`) rewrites it to the string it means before validation."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["user", "assistant", "system"] = Field(description="who speaks")
    content: list[ContentPart] = Field(description="the parts, in order: an image part is '<image>\\n', a text "
                                                   "part its text")

    @property
    def text(self) -> str:
        from parsit_data.sources.normalize import _parts_text  # the one mapping (it imports this module)

        return _parts_text([p.model_dump(exclude_none=True) for p in self.content], 0, [])


def turn_spelling(turn: Any) -> str | None:
    """Which spelling a raw turn uses (decided by its keys, so errors name the right fields)."""
    if isinstance(turn, dict):
        if "from" in turn or "value" in turn:
            return "from_value"
        if "role" in turn or "content" in turn:
            return "role_parts" if isinstance(turn.get("content"), list) else "role_content"
    elif isinstance(turn, (FromValueTurn, RoleContentTurn, RolePartsTurn)):
        return {FromValueTurn: "from_value", RoleContentTurn: "role_content"}.get(type(turn), "role_parts")
    return None


InputTurn = Annotated[
    Annotated[FromValueTurn, Tag("from_value")] | Annotated[RoleContentTurn, Tag("role_content")]
    | Annotated[RolePartsTurn, Tag("role_parts")],
    Discriminator(turn_spelling, custom_error_type="bad_turn",
                  custom_error_message="a turn needs from/value or role/content"),
]


def _alias_spellings(schema: dict) -> None:
    """The JSON Schema names the other accepted keys too (pydantic writes only the first alias of each):
    ``messages`` for ``conversations`` (one of the two is required) and ``images`` for ``image``."""
    props = schema["properties"]
    props["messages"] = {**props["conversations"], "description": "another name of 'conversations'"}
    props["images"] = {**props["image"], "description": "another name of 'image'"}
    schema["required"] = [r for r in schema.get("required", []) if r != "conversations"]
    if not schema["required"]:
        del schema["required"]
    schema["anyOf"] = [{"required": ["conversations"]}, {"required": ["messages"]}]


class InputRecord(BaseModel):
    """One input record (a JSONL line or an element of a JSON list).

    Other top-level fields are allowed and ignored (LLaVA datasets carry e.g. ``source``). Beyond this
    schema, validation requires:
    turns alternate user/assistant after an optional leading system turn, at least one assistant
    turn, no empty or whitespace-only text, one ``<image>`` per image (in user turns), and no literal
    control token of the template or tokenizer.
    """

    model_config = ConfigDict(extra="allow", strict=True, title="Parsit input record",
                              json_schema_extra=_alias_spellings)
    conversations: list[InputTurn] = Field(
        min_length=1, validation_alias=AliasChoices("conversations", "messages"),
        description="the turns, in order ('messages' is accepted as another name); a turn's content may be a "
                    "list of parts (docs/FORMATS.md)")
    image: str | list[str] | None = Field(
        None, validation_alias=AliasChoices("image", "images"),
        description="image path(s) relative to the image root ('images' is accepted as another name)")
    video: str | None = Field(
        None, description="one video path relative to the video root; its place in the text is '<video>', or the "
                          "single '<image>' of a record without images (LLaVA-Video's spelling)")
    id: str | int | None = Field(None, description="the record's id; must be unique within a build")


# --- normalised: what later stages work on ---------------------------------------------------------


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
    #: Paths under the image root, or :class:`~parsit_data.sources.EmbeddedImage` (bytes from the input).
    images: list = field(default_factory=list)
    #: The clip's path under the video root (at most one video per record), or None.
    video: str | None = None


# --- output: quarantine -----------------------------------------------------------------------------


class QuarantineRecord(BaseModel):
    """One line of ``quarantine.jsonl``: a rejected record, where it was, and why."""

    model_config = ConfigDict(extra="forbid", title="Parsit quarantine record")
    source: str = Field(description="source name (as in the manifest's sources)")
    line: int | None = Field(None, description="1-based line number, for JSONL sources")
    index: int | None = Field(None, description="0-based position, for JSON list, Parquet/Arrow and tar sources")
    member: str | None = Field(None, description="only for containers of rows or members: the file and row "
                                                 "('data.parquet row 12') or the tar shard and sample key "
                                                 "('shard-0.tar:key'); absent otherwise")
    sample_id: str | None = Field(description="the record's id, or source:position; null when unparseable")
    reason: Reason = Field(description="a stable reason code, see docs/REASONS.md")
    detail: str = Field(description="what exactly is wrong, naming the turn or image")
    record: Any = Field(description="the original record, untouched (an embedded image as {embedded, bytes}: where "
                                    "it is and its size, never its bytes), or the raw line when it was not valid JSON "
                                    "(when it was not valid UTF-8: the line with each bad byte as \\xNN, see "
                                    "record_b64). A lone surrogate is written as its JSON escape (\\ud800)")
    record_b64: str | None = Field(None, description="only when the line is not valid UTF-8: its exact bytes "
                                                     "(without the line break), base64; absent otherwise")


@dataclass(frozen=True)
class Rejection:
    """Why one record is quarantined. ``reason`` is coerced to :class:`Reason`: an unknown code is a bug
    and raises ``ValueError`` where the rejection is made."""

    reason: Reason
    detail: str

    def __post_init__(self):
        if type(self.reason) is not Reason:
            object.__setattr__(self, "reason", Reason(self.reason))


class Reject(Exception):
    """Raised inside validation/tokenization to quarantine the current record."""

    def __init__(self, reason: Reason | str, detail: str):
        self.rejection = Rejection(reason, detail)
        super().__init__(f"{self.rejection.reason.value}: {detail}")

    def __reduce__(self):  # picklable: a video's Reject crosses the decoder process
        return (type(self), (self.rejection.reason.value, self.rejection.detail))

    @property
    def reason(self) -> Reason:
        return self.rejection.reason

    @property
    def detail(self) -> str:
        return self.rejection.detail
