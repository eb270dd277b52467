"""The other families LLaVA-NeXT ships: ``llava_v1`` (vicuna), ``llama3``, and ``plain`` captions.

The exact strings follow LLaVA-NeXT's ``llava/conversation.py`` (``conv_llava_v1``,
``conv_llava_llama_3``, ``conv_llava_plain``); where Parsit differs, the class docstring says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from parsit_data.format import IMAGE_PLACEHOLDER
from parsit_data.records import Record
from parsit_data.templates.base import NATIVE, Segment, Template, example_record, mismatch, split_system

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)


@dataclass(frozen=True)
class VicunaTemplate(Template):
    """``llava_v1``: ``<s>{system} USER: {q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT: {a2}</s>``.

    (``conv_llava_v1``: separator style TWO, ``sep=" "``, ``sep2="</s>"``; the tokenizer's BOS first.)

    Boundary rule. ``ASSISTANT:`` and the reply are separated by a space, not by a control token, so a
    token could straddle the cut. Parsit cuts where inference does: the generation prompt ends with
    ``ASSISTANT:`` (upstream's ``get_prompt`` for an open turn renders ``role + ":"``), and the model then
    generates the space together with the first word (``" The"`` is one token in byte-level and
    SentencePiece vocabularies alike). So the prompt segment ends at the colon and the reply segment is
    ``" " + content``, tokenized on its own and supervised together with ``</s>``. The supervised text of
    a turn is therefore the separator space, the reply, and ``</s>``. This is also what upstream's
    ``preprocess_v1`` supervises when its length bookkeeping works.
    """

    name: str = "llava_v1"
    family: str = "vicuna"
    default_system: str = VICUNA_SYSTEM
    bos: str = "<s>"
    eos: str = "</s>"
    user_role: str = "USER"
    assistant_role: str = "ASSISTANT"

    @property
    def control_tokens(self) -> frozenset[str]:
        return frozenset({self.bos, self.eos})

    def describe(self, system_prompt: str | None = None, policy: str = NATIVE) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "system_prompt": system_prompt if system_prompt is not None else self.default_system,
            "bos": self.bos,
            "format": f"{self.bos}{{system}} {self.user_role}: {{user}} {self.assistant_role}: {{reply}}{self.eos}"
                      f"{self.user_role}: {{user}} {self.assistant_role}: {{reply}}{self.eos}...",
            "assistant_header": f"{self.assistant_role}:",
            "end_of_turn": self.eos,
            "supervised": f"' ' + each assistant reply, and the {self.eos} that closes it",
            "boundary": "the prompt ends at 'ASSISTANT:'; the separator space is the first character of the "
                        "reply segment (as generated at inference)",
        }

    def render(self, record: Record, system_prompt: str | None = None, policy: str = NATIVE) -> list[Segment]:
        self.check_policy(policy)
        system, first = split_system(record, system_prompt, self.default_system)
        segs = [Segment(self.bos, True, False, -1)]
        prompt = f"{system} "
        turn = -1
        for i in range(first, len(record.turns)):
            t = record.turns[i]
            if t.role == "user":
                prompt += f"{self.user_role}: {t.content} "
                turn = i
            else:
                segs.append(Segment(prompt + f"{self.assistant_role}:", False, False, turn))
                segs += [Segment(" " + t.content, False, True, i), Segment(self.eos, True, True, i)]
                prompt = ""
        if prompt:
            segs.append(Segment(prompt, False, False, turn))
        return segs


@dataclass(frozen=True)
class Llama3Template(Template):
    """``llama3``: ``conv_llava_llama_3`` (Meta's Llama-3-Instruct chat format)::

        <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{system}<|eot_id|>
        <|start_header_id|>user<|end_header_id|>\\n\\n{q}<|eot_id|>
        <|start_header_id|>assistant<|end_header_id|>\\n\\n[{a}<|eot_id|>]

    (no newlines between turns; shown here for reading). Every separator is a control token except the
    ``\\n\\n`` after ``<|end_header_id|>``: it belongs to the header, and the reply is its own segment
    (the generation prompt ends with ``<|end_header_id|>\\n\\n``). One difference from Meta's Jinja
    template: it trims each message; Parsit uses text exactly as written (docs/TEMPLATES.md, llama3).
    """

    name: str = "llama3"
    family: str = "llama3"
    default_system: str = LLAMA3_SYSTEM
    bos: str = "<|begin_of_text|>"
    start: str = "<|start_header_id|>"
    end_header: str = "<|end_header_id|>"
    eot: str = "<|eot_id|>"

    @property
    def control_tokens(self) -> frozenset[str]:
        return frozenset({self.bos, self.start, self.end_header, self.eot})

    def describe(self, system_prompt: str | None = None, policy: str = NATIVE) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "system_prompt": system_prompt if system_prompt is not None else self.default_system,
            "bos": self.bos,
            "turn": f"{self.start}{{role}}{self.end_header}\\n\\n{{content}}{self.eot}",
            "assistant_header": f"{self.start}assistant{self.end_header}\\n\\n",
            "end_of_turn": self.eot,
            "supervised": f"each assistant reply and the {self.eot} that closes it",
            "boundary": "the header's '\\n\\n' is its own segment; the reply is encoded on its own",
        }

    def _turn(self, role: str, content: str, i: int, reply: bool) -> list[Segment]:
        head = [Segment(self.start, True, False, i), Segment(role, False, False, i),
                Segment(self.end_header, True, False, i)]
        if reply:
            return head + [Segment("\n\n", False, False, i), Segment(content, False, True, i),
                           Segment(self.eot, True, True, i)]
        return head + [Segment("\n\n" + content, False, False, i), Segment(self.eot, True, False, i)]

    def render(self, record: Record, system_prompt: str | None = None, policy: str = NATIVE) -> list[Segment]:
        self.check_policy(policy)
        system, first = split_system(record, system_prompt, self.default_system)
        segs = [Segment(self.bos, True, False, -1)]
        if system is not None:
            segs += self._turn("system", system, 0 if first else -1, False)
        for i in range(first, len(record.turns)):
            t = record.turns[i]
            segs += self._turn(t.role, t.content, i, t.role == "assistant")
        return segs


@dataclass(frozen=True)
class PlainTemplate(Template):
    """``plain``: pretraining captions: ``<image>...<image>{caption}{end}``.

    Like upstream's ``preprocess_plain``, the user turn contributes only its image placeholders (its
    words, typically a generic "describe the image" prompt, are dropped) and there is no system prompt.
    Unlike upstream, which ends with ``"\\n"`` (``conv_llava_plain.sep``), the caption ends with the
    tokenizer's end-of-text token, so a caption model learns to stop. Supervised: the caption and the end
    token; the caption is encoded on its own (there is no text before it to merge with). A record that
    is not one user turn and one assistant turn is quarantined (``template_mismatch``).
    """

    end: str = "<|endoftext|>"
    name: str = "plain"
    family: str = "plain"
    takes_system_prompt: bool = False

    @property
    def control_tokens(self) -> frozenset[str]:
        return frozenset({self.end})

    def describe(self, system_prompt: str | None = None, policy: str = NATIVE) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "system_prompt": None,
            "format": f"{IMAGE_PLACEHOLDER}...{{caption}}{self.end}",
            "end_of_turn": self.end,
            "supervised": f"the caption and {self.end}",
            "dropped": "the words of the user turn (only its <image> placeholders are kept)",
        }

    def example(self) -> Record:
        return example_record(1)

    def render(self, record: Record, system_prompt: str | None = None, policy: str = NATIVE) -> list[Segment]:
        self.check_policy(policy)
        roles = [t.role for t in record.turns]
        if roles != ["user", "assistant"]:
            raise mismatch(f"template plain takes one user turn (its <image> placeholders) and one assistant turn "
                           f"(the caption); this record has turns {roles}")
        user, caption = record.turns
        n = user.content.count(IMAGE_PLACEHOLDER)
        segs = [Segment(IMAGE_PLACEHOLDER * n, False, False, 0)] if n else []
        return segs + [Segment(caption.content, False, True, 1), Segment(self.end, True, True, 1)]
