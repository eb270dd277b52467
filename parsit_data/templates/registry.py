"""Template names -> templates; ``plain`` and ``tokenizer`` are bound to a tokenizer folder.

:func:`get_template` is the only way the build finds a template by the name a user passed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import get_args

from parsit_data.errors import ParsitError
from parsit_data.format import read_tokenizer_config, resolve_tokenizer_path, token_content
from parsit_data.templates.base import Template, TemplateName
from parsit_data.templates.chatml import PARSIT, QWEN3, QWEN_1_5
from parsit_data.templates.jinja import JinjaTemplate
from parsit_data.templates.llava import Llama3Template, PlainTemplate, VicunaTemplate
from parsit_data.tokenizer import load_tokenizer

#: Templates that need no tokenizer to exist.
TEMPLATES: dict[str, Template] = {
    "qwen_1_5": QWEN_1_5,
    "parsit": PARSIT,
    "qwen3": QWEN3,
    "llava_v1": VicunaTemplate(),
    "llama3": Llama3Template(),
}
TEMPLATE_NAMES: tuple[str, ...] = get_args(TemplateName)
assert set(TEMPLATE_NAMES) == {*TEMPLATES, "plain", "tokenizer"}


def _plain_end_token(folder: Path) -> str:
    """``<|endoftext|>`` when the tokenizer has it, else the tokenizer's own eos token."""
    tok = load_tokenizer(folder)
    if tok.token_to_id("<|endoftext|>") is not None:
        return "<|endoftext|>"
    eos = token_content(read_tokenizer_config(folder).get("eos_token"))
    if not eos or tok.token_to_id(eos) is None:
        raise ParsitError(f"template plain needs an end-of-text token: the tokenizer in {folder} has neither "
                          "<|endoftext|> nor an eos_token in tokenizer_config.json")
    return eos


def get_template(name: str, tokenizer: str | Path | None = None) -> Template:
    """The template ``name``; ``plain`` and ``tokenizer`` read the tokenizer folder (``'qwen3'`` allowed)."""
    if name in TEMPLATES:
        return TEMPLATES[name]
    if name in ("plain", "tokenizer"):
        if tokenizer is None:
            raise ParsitError(f"template {name!r} needs the tokenizer (pass --tokenizer)")
        folder = resolve_tokenizer_path(tokenizer)
        stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(folder.glob("*.json")))
        return _bound_template(name, str(folder), stamp)
    raise ParsitError(f"unknown template {name!r}: choose one of {', '.join(TEMPLATE_NAMES)}")


@lru_cache(maxsize=16)
def _bound_template(name: str, folder: str, stamp: tuple) -> Template:
    """Templates that read the tokenizer folder, cached per folder state (loading it takes a while)."""
    if name == "plain":
        return PlainTemplate(end=_plain_end_token(Path(folder)))
    return JinjaTemplate(Path(folder))
