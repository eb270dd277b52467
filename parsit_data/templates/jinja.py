"""``tokenizer``: the tokenizer's own Jinja chat template, with supervised spans recovered by rendering.

The template is rendered twice per record: once as is, and once with every assistant content wrapped in
two sentinel characters (private-use code points that a record may not contain). The sentinels give the
exact character span of each reply in the rendering; the two renderings must agree once the sentinels
are removed, which proves the template passed the reply through untouched. When it does not (a template
that trims replies, splits off ``</think>`` reasoning, or drops earlier assistant turns), the record is
quarantined with reason ``template_mismatch`` rather than trained on a guess.

The rendered text is then cut into segments: each special token of the tokenizer is a control segment,
each reply span is its own supervised segment, and the text between is one segment each (encoded as the
tokenizer encodes it, so non-special added tokens such as Qwen3's ``<think>`` are handled by the
tokenizer itself). The control token that immediately follows a reply (``<|im_end|>`` for ChatML) is the
end-of-turn token and is supervised with it. Nothing is found by searching for separators: the spans come
from the sentinels, the control tokens from the tokenizer's own list.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from parsit_data.errors import ParsitError
from parsit_data.format import read_tokenizer_config, token_content
from parsit_data.records import Record
from parsit_data.templates.base import NATIVE, Segment, Template, mismatch

_OPEN = "\ue000"
_CLOSE = "\ue001"


def _chat_template_source(folder: Path) -> str:
    jinja_file = folder / "chat_template.jinja"  # where recent transformers save it
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    src = read_tokenizer_config(folder).get("chat_template")
    if isinstance(src, list):  # named templates: [{"name": "default", "template": ...}, ...]
        src = next((t.get("template") for t in src if t.get("name") == "default"), None)
    if not isinstance(src, str) or not src.strip():
        raise ParsitError(
            f"the tokenizer in {folder} has no chat template (tokenizer_config.json 'chat_template' or "
            "chat_template.jinja): choose another --template (qwen_1_5, qwen3, llama3, llava_v1, plain, parsit)"
        )
    return src


def _compile(source: str):
    """Compile like transformers' ``apply_chat_template``: sandboxed, trim_blocks, lstrip_blocks."""
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ParsitError(f"the tokenizer's chat template does not compile: {exc}") from exc


@dataclass(eq=False)
class JinjaTemplate(Template):
    folder: Path
    name: str = "tokenizer"
    family: str = "jinja"
    source: str = field(init=False)
    specials: tuple[str, ...] = field(init=False)
    context: dict = field(init=False)

    def __post_init__(self):
        self.folder = Path(self.folder)
        self.source = _chat_template_source(self.folder)
        self._tmpl = _compile(self.source)
        tj = json.loads((self.folder / "tokenizer.json").read_text(encoding="utf-8"))
        self.specials = tuple(sorted({t["content"] for t in tj.get("added_tokens", []) if t.get("special")},
                                     key=lambda s: (-len(s), s)))
        self._control_re = re.compile("|".join(map(re.escape, self.specials))) if self.specials else None
        cfg = read_tokenizer_config(self.folder)
        self.context = {k: token_content(cfg.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        self.context["additional_special_tokens"] = [token_content(t) for t in cfg.get("additional_special_tokens", [])]

    @property
    def control_tokens(self) -> frozenset[str]:
        return frozenset(self.specials)

    def describe(self, system_prompt: str | None = None, policy: str = NATIVE) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "system_prompt": system_prompt,
            "chat_template": self.source,
            "chat_template_sha256": hashlib.sha256(self.source.encode()).hexdigest(),
            "supervised": "each assistant reply (its span in the rendering) and the control token right after it",
            "boundary": "rendered with add_generation_prompt=False; text between special tokens is one piece, "
                        "each reply its own",
        }

    def _render(self, messages: list[dict]) -> str:
        from jinja2.exceptions import TemplateError

        try:
            return self._tmpl.render(messages=messages, add_generation_prompt=False, **self.context)
        except TemplateError as exc:
            raise mismatch(f"the tokenizer's chat template refused the record: {exc}") from None

    def render(self, record: Record, system_prompt: str | None = None, policy: str = NATIVE) -> list[Segment]:
        self.check_policy(policy)
        turns = list(enumerate(record.turns))
        messages = [{"role": t.role, "content": t.content} for _, t in turns]
        if system_prompt is not None and not (turns and turns[0][1].role == "system"):
            messages.insert(0, {"role": "system", "content": system_prompt})
        replies = [i for i, t in turns if t.role == "assistant"]
        if any(_OPEN in m["content"] or _CLOSE in m["content"] for m in messages):
            raise mismatch("the text contains U+E000 or U+E001, which the tokenizer template uses as reply markers")
        plain = self._render(messages)
        offset = len(messages) - len(turns)
        marked_msgs = [dict(m) for m in messages]
        for i in replies:
            m = marked_msgs[i + offset]
            m["content"] = _OPEN + m["content"] + _CLOSE
        marked = self._render(marked_msgs)
        if marked.replace(_OPEN, "").replace(_CLOSE, "") != plain or marked.count(_OPEN) != len(replies) \
                or marked.count(_CLOSE) != len(replies):
            raise mismatch("the tokenizer's chat template does not render every assistant reply as written "
                           "(it trims, rewrites or drops one); use a Parsit template such as qwen3 or qwen_1_5")
        spans: list[tuple[int, int, int]] = []
        pos = 0
        removed = 0
        for i in replies:
            a = marked.index(_OPEN, pos)
            b = marked.index(_CLOSE, a)
            if a > b or marked.find(_OPEN, a + 1, b) != -1:
                raise mismatch("the tokenizer's chat template reorders assistant replies")
            spans.append((a - removed, b - removed - 1, i))
            removed += 2
            pos = b + 1
        return self._segments(plain, spans, len(record.turns))

    def _segments(self, text: str, spans: list[tuple[int, int, int]], n_turns: int) -> list[Segment]:
        controls = {m.start(): m.end() for m in self._control_re.finditer(text)} if self._control_re else {}
        cuts = {0, len(text)} | set(controls) | set(controls.values())
        for a, b, _ in spans:
            cuts |= {a, b}
        pts = sorted(cuts)
        segs: list[Segment] = []
        k = 0  # next reply span
        turn = spans[0][2] if spans else n_turns
        closed = False  # the current reply is done (its end-of-turn control, if any, emitted)
        for a, b in zip(pts, pts[1:]):
            special = controls.get(a) == b
            if k < len(spans) and a >= spans[k][0] and b <= spans[k][1]:
                segs.append(Segment(text[a:b], False, True, turn))
                continue
            if k < len(spans) and a == spans[k][1]:
                # first piece after reply k: its end-of-turn token when it is a control token
                k += 1
                closed = True
                if special:
                    segs.append(Segment(text[a:b], True, True, turn))
                    continue
            if closed and special:
                # the next control token starts the following turn
                turn = spans[k][2] if k < len(spans) else n_turns
                closed = False
            segs.append(Segment(text[a:b], special, False, turn))
        return segs
