"""Conversation templates and label policies: a record becomes typed segments with ``supervised`` flags.

Templates: ``qwen_1_5``, ``parsit``, ``qwen3`` (ChatML), ``plain`` (pretraining captions), ``llava_v1``
(vicuna), ``llama3``, and ``tokenizer`` (the tokenizer's own Jinja chat template). Label policies:
``native`` (every template) and ``llava-next`` (``qwen_1_5``: LLaVA-NeXT's ``preprocess_qwen`` id for id).
docs/TEMPLATES.md shows each one with its supervised parts marked.

:func:`get_template` binds a template to a tokenizer folder (``plain`` needs its end-of-text token,
``tokenizer`` its chat template); :func:`check_template` refuses, before a build starts, a template,
policy and tokenizer that do not go together; :func:`template_manifest` is the manifest's ``template``
block, with a mask report: an example record rendered with its supervised text in ⟦ ⟧.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from parsit_data.errors import ParsitError
from parsit_data.templates.base import (LABEL_POLICIES, LLAVA_NEXT, NATIVE, TEMPLATE_MISMATCH, Segment, Template,
                                        example_record, rendered_text)
from parsit_data.templates.chatml import (DEFAULT_SYSTEM, LLAVA_NEXT_SYSTEM, PARSIT, PARSIT_SYSTEM, QWEN3, QWEN_1_5,
                                          ChatMLTemplate)
from parsit_data.templates.llava import Llama3Template, PlainTemplate, VicunaTemplate

__all__ = [
    "LABEL_POLICIES", "LLAVA_NEXT", "NATIVE", "TEMPLATE_MISMATCH", "TEMPLATES", "Segment", "Template",
    "ChatMLTemplate", "DEFAULT_SYSTEM", "PARSIT_SYSTEM", "LLAVA_NEXT_SYSTEM", "check_template", "example_record",
    "get_template", "mask_report", "rendered_text", "template_manifest",
]

#: Templates that need no tokenizer to exist.
TEMPLATES: dict[str, Template] = {
    "qwen_1_5": QWEN_1_5,
    "parsit": PARSIT,
    "qwen3": QWEN3,
    "llava_v1": VicunaTemplate(),
    "llama3": Llama3Template(),
}
TEMPLATE_NAMES = (*TEMPLATES, "plain", "tokenizer")

#: Start and end markers of supervised text in a mask report.
MARK_OPEN, MARK_CLOSE = "⟦", "⟧"


def _plain_end_token(tokenizer: str | Path) -> str:
    """``<|endoftext|>`` when the tokenizer has it, else the tokenizer's own eos token."""
    from parsit_data.format import resolve_tokenizer_path
    from parsit_data.tokenizer import load_tokenizer

    folder = resolve_tokenizer_path(tokenizer)
    tok = load_tokenizer(folder)
    if tok.token_to_id("<|endoftext|>") is not None:
        return "<|endoftext|>"
    cfg = folder / "tokenizer_config.json"
    eos = json.loads(cfg.read_text(encoding="utf-8")).get("eos_token") if cfg.is_file() else None
    eos = eos.get("content") if isinstance(eos, dict) else eos
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
        from parsit_data.format import resolve_tokenizer_path

        folder = resolve_tokenizer_path(tokenizer)
        stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(folder.glob("*.json")))
        return _bound_template(name, str(folder), stamp)
    raise ParsitError(f"unknown template {name!r}: choose one of {', '.join(TEMPLATE_NAMES)}")


@lru_cache(maxsize=16)
def _bound_template(name: str, folder: str, stamp: tuple) -> Template:
    """Templates that read the tokenizer folder, cached per folder state (loading it takes a while)."""
    if name == "plain":
        return PlainTemplate(end=_plain_end_token(folder))
    from parsit_data.templates.jinja import JinjaTemplate

    return JinjaTemplate(Path(folder))


def check_template(template: Template, tokenizer, policy: str, system_prompt: str | None = None) -> None:
    """Refuse, with a message that says what to pass, a combination that cannot build correctly.

    ``tokenizer`` is a loaded ``tokenizers.Tokenizer``.
    """
    from parsit_data.tokenize import check_segmentable

    template.check_policy(policy)
    if system_prompt is not None and not template.takes_system_prompt:
        raise ParsitError(f"template {template.name!r} has no system prompt: drop --system-prompt")
    missing = sorted(t for t in template.control_tokens if tokenizer.token_to_id(t) is None)
    if missing:
        raise ParsitError(f"template {template.name!r} needs the control token(s) {', '.join(missing)}, which the "
                          "tokenizer does not have as single vocabulary entries: choose a template made for this "
                          "tokenizer (or --template tokenizer to use its own chat template)")
    for t in template.unmask_tokens(policy):
        if len(tokenizer.encode(t, add_special_tokens=False).ids) != 1:
            raise ParsitError(f"label policy {policy!r} supervises the token {t!r}, which this tokenizer does "
                              "not encode as one token")
    check_segmentable(tokenizer)


def mask_report(template: Template, tokenizer, policy: str = NATIVE, system_prompt: str | None = None) -> dict:
    """The template's example record, tokenized, decoded, with supervised text between ⟦ and ⟧."""
    from parsit_data.tokenize import SegmentTokenizer, marked_text

    from parsit_data.records import Reject

    record = template.example()
    try:
        segs = template.render(record, system_prompt, policy)
    except Reject:
        record = example_record(1)
        try:
            segs = template.render(record, system_prompt, policy)
        except Reject as exc:
            return {"record": None, "rendered": None,
                    "note": f"the template quarantines the example records ({exc.rejection.detail})"}
    tok = SegmentTokenizer(tokenizer).tokenize_batch([segs], template.unmask_tokens(policy))[0]
    return {
        "record": {"image": record.images, "conversations": [{"from": {"user": "human", "assistant": "gpt"}.get(
            t.role, t.role), "value": t.content} for t in record.turns]},
        "rendered": marked_text(tokenizer, tok.input_ids, tok.labels, MARK_OPEN, MARK_CLOSE),
        "tokens": len(tok.input_ids),
        "supervised_tokens": sum(1 for x in tok.labels if x != -100),
    }


def template_manifest(template: Template, tokenizer, policy: str, system_prompt: str | None = None) -> dict:
    """The manifest's ``template`` block: exact strings, label policy, and the mask report."""
    return {**template.describe(system_prompt, policy), "label_policy": policy,
            "mask_report": mask_report(template, tokenizer, policy, system_prompt)}
