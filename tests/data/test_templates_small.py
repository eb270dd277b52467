"""``llama3`` and ``llava_v1`` on small byte-level BPE tokenizers trained here with their special tokens."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from parsit_data.errors import ParsitError
from parsit_data.records import Reject
from parsit_data.mask_report import check_template
from parsit_data.templates import get_template, rendered_text
from parsit_data.templates.llava import LLAMA3_SYSTEM, VICUNA_SYSTEM
from parsit_data.encode import check_segmentable
from parsit_data.tokenizer import load_tokenizer
from tests.data.templates_support import (RECORDS, check_boundaries, encode_chunk, qwen, rec, small_tokenizer,
                                          tokenize)

U, A = "user", "assistant"
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
#: Meta's Llama-3-Instruct chat template (it trims every message).
META_LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    return small_tokenizer(tmp_path_factory.mktemp("llama3"), LLAMA3_SPECIALS, "<|begin_of_text|>", "<|eot_id|>",
                           chat_template=META_LLAMA3_TEMPLATE, pad="<|end_of_text|>")


@pytest.fixture(scope="module")
def vicuna_dir(tmp_path_factory):
    return small_tokenizer(tmp_path_factory.mktemp("vicuna"), ["<unk>", "<s>", "</s>"], "<s>", "</s>", pad="<unk>")


def llama3_text(record, system):
    turns = list(record.turns)
    if turns[0].role == "system":
        system = turns.pop(0).content
    turns = [("system", system)] + [(t.role, t.content) for t in turns]
    return "<|begin_of_text|>" + "".join(f"<|start_header_id|>{r}<|end_header_id|>\n\n{c}<|eot_id|>" for r, c in turns)


def vicuna_text(record, system):
    turns = list(record.turns)
    if turns[0].role == "system":
        system = turns.pop(0).content
    out = f"<s>{system} "
    for t in turns:
        out += f"USER: {t.content} " if t.role == "user" else f"ASSISTANT: {t.content}</s>"
    return out


@pytest.mark.parametrize("shape", sorted(RECORDS))
def test_llama3_boundaries_and_spans(llama3_dir, shape):
    tok = load_tokenizer(llama3_dir)
    record = RECORDS[shape]
    template = get_template("llama3")
    check_template(template, tok, "native")
    check_boundaries(tok, template, record, llama3_text(record, LLAMA3_SYSTEM), eot="<|eot_id|>")


@pytest.mark.parametrize("shape", sorted(RECORDS))
def test_llava_v1_boundaries_and_spans(vicuna_dir, shape):
    """Rule: the prompt ends at 'ASSISTANT:'; the separator space starts the supervised reply."""
    tok = load_tokenizer(vicuna_dir)
    record = RECORDS[shape]
    template = get_template("llava_v1")
    check_template(template, tok, "native")
    check_boundaries(tok, template, record, vicuna_text(record, VICUNA_SYSTEM), reply_prefix=" ", eot="</s>")


def test_llava_v1_cut_matches_inference_and_the_other_cut_does_not(vicuna_dir):
    """Cutting after the colon gives the ids the tokenizer gives the whole text (the space merges with
    the first word, as when generated); cutting after the space would leave a lone space token."""
    tok = load_tokenizer(vicuna_dir)
    record = rec((U, "What is the title?"), (A, "The title is Annual Report 2023."))
    segs, out = tokenize(tok, get_template("llava_v1"), record)
    text = rendered_text(segs)
    assert out.input_ids == tok.encode(text, add_special_tokens=False).ids
    head, reply = text.split("ASSISTANT: ")
    prompt_with_space = encode_chunk(tok, head + "ASSISTANT: ")
    assert prompt_with_space[-1] == tok.token_to_id("Ġ")  # a lone space token inference never produces
    assert prompt_with_space + encode_chunk(tok, reply) != out.input_ids
    first = next(k for k, y in enumerate(out.labels) if y != -100)
    assert tok.decode([out.input_ids[first]]) == " The"


def test_llama3_template_matches_meta_jinja(llama3_dir):
    """Parsit's llama3 renders what Meta's chat template renders (for text it does not trim)."""
    tok = load_tokenizer(llama3_dir)
    jinja = get_template("tokenizer", llama3_dir)
    for shape in ("multi_round", "text_only", "multi_image", "unicode", "unanswered"):
        record = RECORDS[shape]
        ours = rendered_text(get_template("llama3").render(record))
        with_system = rec(("system", LLAMA3_SYSTEM), *[(t.role, t.content) for t in record.turns],
                          images=len(record.images))
        check_boundaries(tok, jinja, with_system, ours, eot="<|eot_id|>")


def test_tokenizer_template_quarantines_trimmed_replies(llama3_dir):
    with pytest.raises(Reject) as exc:
        get_template("tokenizer", llama3_dir).render(RECORDS["leading_newline"])
    assert exc.value.rejection.reason == "template_mismatch"


def test_templates_refuse_a_tokenizer_without_their_control_tokens(vicuna_dir):
    with pytest.raises(ParsitError, match="<\\|eot_id\\|>"):
        check_template(get_template("llama3"), qwen(), "native")
    with pytest.raises(ParsitError, match="<\\|im_end\\|>"):
        check_template(get_template("qwen_1_5"), load_tokenizer(vicuna_dir), "native")
    with pytest.raises(ParsitError, match="no system prompt"):
        check_template(get_template("plain", "qwen3"), qwen(), "native", system_prompt="x")


def test_plain_uses_eos_when_there_is_no_endoftext(llama3_dir):
    t = get_template("plain", llama3_dir)
    assert t.end == "<|eot_id|>"
    check_boundaries(load_tokenizer(llama3_dir), t, rec((U, "<image>"), (A, "The chair."), images=1),
                     "<image>The chair.<|eot_id|>", eot="<|eot_id|>")


def test_prefix_space_tokenizers_are_refused():
    """A SentencePiece-style tokenizer that prefixes every input with a space cannot be built piecewise."""
    tok = Tokenizer(models.WordPiece({"[UNK]": 0, "▁Hello": 1, "▁world": 2, "▁": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    with pytest.raises(ParsitError, match="prefix space"):
        check_segmentable(tok)
    check_segmentable(qwen())  # the real one passes


def test_tokenizer_template_that_raises_quarantines_and_reports(tmp_path):
    """raise_exception in a chat template quarantines the record; the mask report falls back."""
    from parsit_data.mask_report import mask_report

    tpl = ("{% for m in messages %}{% if '<image>' in m['content'] %}{{ raise_exception('no images here') }}"
           "{% endif %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
           "{% endfor %}")
    folder = small_tokenizer(tmp_path / "t", LLAMA3_SPECIALS, "<|begin_of_text|>", "<|eot_id|>", chat_template=tpl)
    t = get_template("tokenizer", folder)
    with pytest.raises(Reject) as exc:
        t.render(RECORDS["multi_image"])
    assert exc.value.rejection.reason == "template_mismatch" and "no images here" in exc.value.rejection.detail
    report = mask_report(t, load_tokenizer(folder))
    assert report["rendered"] is None and "no images here" in report["note"]
    check_boundaries(load_tokenizer(folder), t, RECORDS["text_only"],
                     "<|start_header_id|>user<|end_header_id|>\n\nName a prime number.<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\nSeven is prime.<|eot_id|>", eot="<|eot_id|>")
