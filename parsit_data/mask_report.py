"""Templates meet the tokenizer: the pre-build check of a combination and the manifest's mask report.

This sits above both the templates (:mod:`parsit_data.templates`, which render segments) and the
segment encoder (:mod:`parsit_data.encode`, which makes ids and labels), so neither imports the other's
consumer: :func:`check_template` refuses, before a build starts, a template, policy and tokenizer that
do not go together; :func:`template_manifest` is the manifest's ``template`` block, with a mask report:
an example record rendered with its supervised text in ⟦ ⟧.
"""

from __future__ import annotations

from parsit_data.decode import MARK_CLOSE, MARK_OPEN, marked_text
from parsit_data.encode import SegmentTokenizer, check_segmentable
from parsit_data.errors import ParsitError
from parsit_data.format import IGNORE_INDEX
from parsit_data.records import Reject
from parsit_data.templates import NATIVE, Template, example_record


def check_template(template: Template, tokenizer, policy: str, system_prompt: str | None = None) -> None:
    """Refuse, with a message that says what to pass, a combination that cannot build correctly.

    ``tokenizer`` is a loaded ``tokenizers.Tokenizer``.
    """
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
        "supervised_tokens": sum(1 for x in tok.labels if x != IGNORE_INDEX),
    }


def template_manifest(template: Template, tokenizer, policy: str, system_prompt: str | None = None) -> dict:
    """The manifest's ``template`` block: exact strings, label policy, and the mask report."""
    return {**template.describe(system_prompt, policy), "label_policy": policy,
            "mask_report": mask_report(template, tokenizer, policy, system_prompt)}
