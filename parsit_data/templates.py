"""Conversation templates: a record becomes typed segments, each carrying its ``supervised`` flag.

Masks are correct by construction: the template says which segments are trained on, and
:mod:`parsit_data.tokenize` tokenizes segment by segment. Nothing ever searches rendered text for
separators.

Token boundaries follow inference. The text between two control tokens is one segment (tokenized as
the tokenizer encodes it), except that an assistant reply is its own segment, apart from the
``assistant\\n`` header before it: at inference the prompt ends with the header and the reply is then
generated after it. Worked example (``qwen_1_5``, policy ``native``)::

    <|im_start|> | system\\nYou are a helpful assistant. | <|im_end|> | \\n
    <|im_start|> | user\\n<image>\\nWhat is the title?   | <|im_end|> | \\n
    <|im_start|> | assistant\\n | [Annual Report 2023.] | [<|im_end|>] | \\n

Only the bracketed segments are supervised.
"""

from __future__ import annotations

from dataclasses import dataclass

from parsit_data.errors import ParsitError
from parsit_data.records import Record


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    special: bool = False  # a control token: one vocabulary id, never run through the BPE
    supervised: bool = False
    turn: int = -1  # index of the record turn this segment belongs to (-1: template preamble)


DEFAULT_SYSTEM = "You are a helpful assistant."
PARSIT_SYSTEM = (
    "You are Parsit, a document-analysis assistant. Read the page images carefully and answer "
    "precisely from what they show."
)


@dataclass(frozen=True)
class ChatMLTemplate:
    """ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn."""

    name: str
    default_system: str | None
    start: str = "<|im_start|>"
    end: str = "<|im_end|>"

    @property
    def control_tokens(self) -> frozenset[str]:
        return frozenset({self.start, self.end})

    @property
    def eot_token(self) -> str:
        return self.end

    def describe(self, system_prompt: str | None = None) -> dict:
        return {
            "name": self.name,
            "family": "chatml",
            "system_prompt": self.system_prompt(system_prompt),
            "turn": f"{self.start}{{role}}\\n{{content}}{self.end}\\n",
            "assistant_header": f"{self.start}assistant\\n",
            "end_of_turn": self.end,
        }

    def system_prompt(self, override: str | None) -> str | None:
        return override if override is not None else self.default_system

    def render(self, record: Record, system_prompt: str | None = None, policy: str = "native") -> list[Segment]:
        if policy != "native":
            raise ParsitError(f"label policy {policy!r} is not available for template {self.name!r}")
        segs: list[Segment] = []
        turns = record.turns
        system = self.system_prompt(system_prompt)
        if turns and turns[0].role == "system":
            system, first = turns[0].content, 1
        else:
            first = 0
        if system is not None:
            t = 0 if first else -1
            segs += [Segment(self.start, True, False, t), Segment(f"system\n{system}", False, False, t),
                     Segment(self.end, True, False, t), Segment("\n", False, False, t)]
        for i in range(first, len(turns)):
            turn = turns[i]
            if turn.role == "user":
                segs += [Segment(self.start, True, False, i), Segment(f"user\n{turn.content}", False, False, i),
                         Segment(self.end, True, False, i), Segment("\n", False, False, i)]
            else:
                segs += [Segment(self.start, True, False, i), Segment("assistant\n", False, False, i),
                         Segment(turn.content, False, True, i), Segment(self.end, True, True, i),
                         Segment("\n", False, False, i)]
        return segs


TEMPLATES = {
    "qwen_1_5": ChatMLTemplate("qwen_1_5", DEFAULT_SYSTEM),
    "parsit": ChatMLTemplate("parsit", PARSIT_SYSTEM),
    "qwen3": ChatMLTemplate("qwen3", None),
}
LABEL_POLICIES = ("native",)


def get_template(name: str):
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ParsitError(f"unknown template {name!r}: choose one of {', '.join(sorted(TEMPLATES))}") from None


def rendered_text(segments: list[Segment]) -> str:
    return "".join(s.text for s in segments)
