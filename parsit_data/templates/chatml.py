"""ChatML (``qwen_1_5``, ``parsit``, ``qwen3``) and the ``llava-next`` label policy.

Policy ``native``, worked example (``qwen_1_5``), one segment per ``|``, supervised in ``[ ]``::

    <|im_start|> | system\\nYou are a helpful assistant. | <|im_end|> | \\n
    <|im_start|> | user\\n<image>\\nWhat is the title?   | <|im_end|> | \\n
    <|im_start|> | assistant\\n | [Annual Report 2023.] | [<|im_end|>] | \\n

Every separator is a control token, so no token can straddle the cut between header and reply: the
reply is encoded on its own, exactly as it is generated after ``<|im_start|>assistant\\n``.

Policy ``llava-next`` reproduces LLaVA-NeXT's ``preprocess_qwen`` (llava/train/train.py, the version
that builds each turn with ``apply_chat_template``) together with ``preprocess_multimodal``:

- the system prompt is fixed ("You are a helpful assistant.", upstream's ``system_message``; an explicit
  ``--system-prompt`` replaces it like that argument would). Upstream skips a first turn that is not
  from the human (and raises on a ``system`` role), so a record's own system turn is dropped;
- in a record with images, a turn holding exactly one ``<image>`` that does not start with it gets it
  moved: ``"<image>\\n" + text.replace("<image>", "").strip()``; every turn has the literal
  ``QA_GT_caption_based_noisy`` removed (upstream's clean-up for one noisy data set);
- each turn is rendered ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` and tokenized in one call, with
  ``<image>`` registered as an added token: so ``{role}\\n{content}`` is ONE piece (the reply is not cut
  from its header, unlike ``native``: a reply starting with a newline merges with the header's);
- labels: the whole assistant turn (header, content, ``<|im_end|>``, trailing ``\\n``), and every
  ``<|im_start|>``, ``<|im_end|>`` and ``\\n`` token (id 198 in Qwen's vocabulary) anywhere, system and
  user turns included.
"""

from __future__ import annotations

from dataclasses import dataclass

from parsit_data.format import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from parsit_data.records import Record
from parsit_data.templates.base import LLAVA_NEXT, NATIVE, Segment, Template, split_system

DEFAULT_SYSTEM = "You are a helpful assistant."
PARSIT_SYSTEM = (
    "You are Parsit, a document-analysis assistant. Read the page images carefully and answer "
    "precisely from what they show."
)
#: preprocess_qwen's default ``system_message``.
LLAVA_NEXT_SYSTEM = "You are a helpful assistant."
_NOISY_MARK = "QA_GT_caption_based_noisy"


def llava_next_multimodal(text: str, placeholder: str = IMAGE_PLACEHOLDER) -> str:
    """Upstream ``preprocess_multimodal`` on one turn of a record that has images (or a video: upstream's
    ``<image>`` there is the video's, which Parsit spells ``<video>``)."""
    if text.count(placeholder) == 1 and not text.startswith(placeholder):
        text = text.replace(placeholder, "").strip()
        text = (placeholder + "\n" + text).strip()
    return text.replace(_NOISY_MARK, "")


@dataclass(frozen=True)
class ChatMLTemplate(Template):
    """ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn."""

    name: str
    default_system: str | None
    policies: tuple[str, ...] = (NATIVE,)
    start: str = "<|im_start|>"
    end: str = "<|im_end|>"
    family: str = "chatml"

    @property
    def control_tokens(self) -> frozenset[str]:
        return frozenset({self.start, self.end})

    @property
    def eot_token(self) -> str:
        return self.end

    def unmask_tokens(self, policy: str) -> tuple[str, ...]:
        return (self.start, self.end, "\n") if policy == LLAVA_NEXT else ()

    def describe(self, system_prompt: str | None = None, policy: str = NATIVE) -> dict:
        d = {
            "name": self.name,
            "family": self.family,
            "system_prompt": self.system_prompt(system_prompt),
            "turn": f"{self.start}{{role}}\\n{{content}}{self.end}\\n",
            "assistant_header": f"{self.start}assistant\\n",
            "end_of_turn": self.end,
            "supervised": "each assistant reply and the <|im_end|> that closes it",
            "boundary": "every separator is a control token; the reply is encoded on its own after its header",
        }
        if policy == LLAVA_NEXT:
            d.update({
                "system_prompt": system_prompt if system_prompt is not None else LLAVA_NEXT_SYSTEM,
                "supervised": "whole assistant turns (header, content, <|im_end|>, trailing newline) and every "
                              "<|im_start|>, <|im_end|> and '\\n' token anywhere (LLaVA-NeXT preprocess_qwen)",
                "boundary": "each turn is encoded in one call: '{role}\\n{content}' is one piece (upstream)",
                "unmask_tokens": list(self.unmask_tokens(policy)),
            })
        return d

    def system_prompt(self, override: str | None) -> str | None:
        return override if override is not None else self.default_system

    def render(self, record: Record, system_prompt: str | None = None, policy: str = NATIVE) -> list[Segment]:
        self.check_policy(policy)
        if policy == LLAVA_NEXT:
            return self._render_llava_next(record, system_prompt)
        # tuple.__new__ builds the NamedTuple without its Python-level __new__: this loop runs for every
        # turn of every record.
        new, S, start, end = tuple.__new__, Segment, self.start, self.end
        segs: list[Segment] = []
        turns = record.turns
        system, first = split_system(record, system_prompt, self.default_system)
        if system is not None:
            t = 0 if first else -1
            segs += [new(S, (start, True, False, t)), new(S, (f"system\n{system}", False, False, t)),
                     new(S, (end, True, False, t)), new(S, ("\n", False, False, t))]
        for i in range(first, len(turns)):
            turn = turns[i]
            if turn.role == "user":
                segs += [new(S, (start, True, False, i)), new(S, (f"user\n{turn.content}", False, False, i)),
                         new(S, (end, True, False, i)), new(S, ("\n", False, False, i))]
            else:
                segs += [new(S, (start, True, False, i)), new(S, ("assistant\n", False, False, i)),
                         new(S, (turn.content, False, True, i)), new(S, (end, True, True, i)),
                         new(S, ("\n", False, False, i))]
        return segs

    def _render_llava_next(self, record: Record, system_prompt: str | None) -> list[Segment]:
        system = system_prompt if system_prompt is not None else LLAVA_NEXT_SYSTEM
        segs = [Segment(self.start, True, False, -1), Segment(f"system\n{system}", False, False, -1),
                Segment(self.end, True, False, -1), Segment("\n", False, False, -1)]
        has_image = bool(record.images) or record.video is not None
        placeholder = VIDEO_PLACEHOLDER if record.video is not None and not record.images else IMAGE_PLACEHOLDER
        for i, turn in enumerate(record.turns):
            if turn.role == "system":
                continue  # upstream: source[1:] when the first turn is not from the human
            content = llava_next_multimodal(turn.content, placeholder) if has_image else turn.content
            sup = turn.role == "assistant"
            segs += [Segment(self.start, True, sup, i), Segment(f"{turn.role}\n{content}", False, sup, i),
                     Segment(self.end, True, sup, i), Segment("\n", False, sup, i)]
        return segs


QWEN_1_5 = ChatMLTemplate("qwen_1_5", DEFAULT_SYSTEM, policies=(NATIVE, LLAVA_NEXT))
PARSIT = ChatMLTemplate("parsit", PARSIT_SYSTEM)
QWEN3 = ChatMLTemplate("qwen3", None)
