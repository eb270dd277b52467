"""What every template shares: typed segments, the template interface, and the example record.

A template turns a validated :class:`~parsit_data.records.Record` into a list of :class:`Segment`.
Each segment is tokenized on its own (:mod:`parsit_data.encode`) and carries its ``supervised``
flag, so masks are correct by construction: nothing ever searches rendered text for separators or
counts tokens after splitting.

Token boundaries follow inference (docs/TEMPLATES.md, "The token-boundary rule"). The text between two
control tokens is one segment, tokenized as the tokenizer encodes it, except that an assistant reply is its own segment,
apart from the header before it: at inference the prompt ends with that header and the reply is then
generated after it. Templates whose separators are not control tokens (vicuna's ``ASSISTANT:``) say
in their docstring where the cut between prompt and reply falls.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

from parsit_data.errors import ParsitError
from parsit_data.records import Record, Reject, Turn

#: Quarantine reason for a record that the chosen template cannot render faithfully (a plain caption
#: template given a multi-round record, a chat template that rewrites reply text, ...).
TEMPLATE_MISMATCH = "template_mismatch"

#: Every template name (what ``--template`` accepts; :mod:`parsit_data.templates.registry` maps them).
TemplateName = Literal["qwen_1_5", "parsit", "qwen3", "llava_v1", "llama3", "plain", "tokenizer"]

#: What ``--label-policy`` accepts.
LabelPolicy = Literal["native", "llava-next"]
NATIVE: LabelPolicy = "native"
LLAVA_NEXT: LabelPolicy = "llava-next"
LABEL_POLICIES: tuple[str, ...] = get_args(LabelPolicy)


class Segment(NamedTuple):
    """A piece of the rendered sample. A NamedTuple: millions are made per build, so it must be cheap."""

    text: str
    special: bool = False  # a control token: one vocabulary id, never run through the BPE
    supervised: bool = False
    turn: int = -1  # index of the record turn this segment belongs to (-1: template preamble)


def rendered_text(segments: list[Segment]) -> str:
    return "".join(s.text for s in segments)


def example_record(rounds: int = 2) -> Record:
    """The record every mask report renders: one image, one or two rounds, a reply with a newline."""
    turns = [Turn(role="user", content="<image>\nWhat is the title?"),
             Turn(role="assistant", content="Annual Report 2023.")]
    if rounds > 1:
        turns += [Turn(role="user", content="Which year?"),
                  Turn(role="assistant", content="2023.\nSee the cover.")]
    return Record(sample_id="example", source="example", position=0, turns=turns, images=["page-1.png"])


class Template:
    """The interface of a template. Subclasses set the class attributes and implement ``render``."""

    name: str
    family: str
    #: Label policies this template implements.
    policies: tuple[str, ...] = (NATIVE,)
    #: Whether ``--system-prompt`` means something for this template.
    takes_system_prompt: bool = True

    @property
    def control_tokens(self) -> frozenset[str]:
        """Strings that become one vocabulary id each (and are therefore refused in record text)."""
        return frozenset()

    def check_policy(self, policy: str) -> None:
        if policy not in LABEL_POLICIES:
            raise ParsitError(f"unknown label policy {policy!r}: choose one of {', '.join(LABEL_POLICIES)}")
        if policy not in self.policies:
            raise ParsitError(
                f"label policy {policy!r} is not available for template {self.name!r} "
                f"(it implements: {', '.join(self.policies)})"
                + ("; llava-next reproduces LLaVA-NeXT's preprocess_qwen, which renders the qwen_1_5 template: "
                   "pass --template qwen_1_5" if policy == LLAVA_NEXT else "")
            )

    def unmask_tokens(self, policy: str) -> tuple[str, ...]:
        """Strings each of which is one token that the policy supervises wherever it occurs."""
        return ()

    def describe(self, system_prompt: str | None = None, policy: str = NATIVE) -> dict:
        raise NotImplementedError

    def render(self, record: Record, system_prompt: str | None = None, policy: str = NATIVE) -> list[Segment]:
        raise NotImplementedError

    def example(self) -> Record:
        return example_record(2)


def split_system(record: Record, override: str | None, default: str | None) -> tuple[str | None, int]:
    """The system prompt to render and the index of the first non-system turn.

    A record's own system turn wins over ``--system-prompt``, which wins over the template default.
    """
    if record.turns and record.turns[0].role == "system":
        return record.turns[0].content, 1
    return (override if override is not None else default), 0


def mismatch(detail: str) -> Reject:
    return Reject(TEMPLATE_MISMATCH, detail)
