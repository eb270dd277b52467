"""ChatML templates, plain and the tokenizer's own chat template, on the real Qwen3 tokenizer."""

from __future__ import annotations

import pytest

from parsit_data.errors import ParsitError
from parsit_data.records import Reject
from parsit_data.templates import DEFAULT_SYSTEM, PARSIT_SYSTEM, get_template, rendered_text
from parsit_data.decode import decode_ids
from tests.data.templates_support import RECORDS, check_boundaries, qwen, rec, tokenize
from tests.data.templates_support import hf_qwen as support_hf_qwen

A, U, S = "assistant", "user", "system"


def chatml(record, system):
    """The expected rendering, written out independently of the template code."""
    out = ""
    turns = list(record.turns)
    if turns[0].role == "system":
        system = turns.pop(0).content
    if system is not None:
        out += f"<|im_start|>system\n{system}<|im_end|>\n"
    return out + "".join(f"<|im_start|>{t.role}\n{t.content}<|im_end|>\n" for t in turns)


@pytest.mark.parametrize("name,system", [("qwen_1_5", DEFAULT_SYSTEM), ("parsit", PARSIT_SYSTEM), ("qwen3", None)])
@pytest.mark.parametrize("shape", sorted(RECORDS))
def test_chatml_boundaries_and_spans(name, system, shape):
    record = RECORDS[shape]
    check_boundaries(qwen(), get_template(name), record, chatml(record, system), eot="<|im_end|>")


def test_system_prompt_override_and_record_system_turn():
    t = get_template("qwen3")
    r = RECORDS["text_only"]
    check_boundaries(qwen(), t, r, chatml(r, "Be brief."), eot="<|im_end|>", system_prompt="Be brief.")
    # a record's own system turn wins over the override
    r = RECORDS["system_turn"]
    check_boundaries(qwen(), t, r, chatml(r, None), eot="<|im_end|>", system_prompt="Be brief.")


def test_design_worked_example_ids():
    r = rec((U, "<image>\nWhat is the title?"), (A, "Annual Report 2023."), images=1)
    _, out = tokenize(qwen(), get_template("qwen_1_5"), r)
    assert out.input_ids == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198,
                             -200, 198, 3838, 374, 279, 2265, 30, 151645, 198, 151644, 77091, 198, 80496, 8259,
                             220, 17, 15, 17, 18, 13, 151645, 198]
    assert out.labels == [-100] * 26 + [80496, 8259, 220, 17, 15, 17, 18, 13, 151645, -100]


def test_leading_newline_reply_is_not_merged_with_the_header():
    """Encoding the whole text would merge the header's newline and the reply's into "\\n\\n" (271)."""
    r = rec((U, "Hi"), (A, "\nHello"))
    segs, out = tokenize(qwen(), get_template("qwen3"), r)
    whole = qwen().encode(rendered_text(segs), add_special_tokens=False).ids
    assert 271 in whole and 271 not in out.input_ids
    k = out.input_ids.index(77091)  # "assistant"
    assert out.input_ids[k + 1:k + 3] == [198, 198]
    assert out.labels[k + 1] == -100 and out.labels[k + 2] == 198  # header newline not supervised; reply's is


# --- plain ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("images,user", [(0, "Describe."), (1, "<image>\nDescribe the picture."),
                                         (2, "Two pages: <image> and <image>")])
@pytest.mark.parametrize("caption", ["A cat on a mat.", "\nA caption that starts with a newline.",
                                     "Ein Bild von 東京 🌆."])
def test_plain_boundaries(images, user, caption):
    t = get_template("plain", "qwen3")
    assert t.end == "<|endoftext|>"
    r = rec((U, user), (A, caption), images=images)
    ids = check_boundaries(qwen(), t, r, "<image>" * images + caption + "<|endoftext|>", eot="<|endoftext|>")
    assert ids[:images] == [-200] * images and ids[-1] == 151643


@pytest.mark.parametrize("shape", ["multi_round", "system_turn", "unanswered"])
def test_plain_quarantines_other_shapes(shape):
    with pytest.raises(Reject) as exc:
        get_template("plain", "qwen3").render(RECORDS[shape])
    assert exc.value.rejection.reason == "template_mismatch"


# --- tokenizer (Qwen3's own Jinja chat template) --------------------------------------------------------

@pytest.fixture(scope="module")
def hf_qwen():
    return support_hf_qwen()


def _messages(record, system_prompt=None):
    msgs = [{"role": t.role, "content": t.content} for t in record.turns]
    if system_prompt is not None and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


@pytest.mark.parametrize("shape", ["multi_round", "text_only", "multi_image", "unicode", "system_turn", "unanswered"])
def test_tokenizer_template_matches_transformers(hf_qwen, shape):
    record = RECORDS[shape]
    expected = hf_qwen.apply_chat_template(_messages(record), tokenize=False)
    check_boundaries(qwen(), get_template("tokenizer", "qwen3"), record, expected, eot="<|im_end|>")


def test_tokenizer_template_system_prompt(hf_qwen):
    record = RECORDS["multi_round"]
    expected = hf_qwen.apply_chat_template(_messages(record, "Be brief."), tokenize=False)
    check_boundaries(qwen(), get_template("tokenizer", "qwen3"), record, expected, eot="<|im_end|>",
                     system_prompt="Be brief.")


def test_tokenizer_template_leading_newline():
    """Qwen3's template keeps earlier replies as written but lstrips the last one: the first is built
    (not merged with its header), the record whose last reply starts with a newline is quarantined."""
    t = get_template("tokenizer", "qwen3")
    ok = rec((U, "Poem?"), (A, "\nRoses are red."), (U, "Thanks."), (A, "You are welcome."))
    segs, out = tokenize(qwen(), t, ok)
    assert decode_ids(qwen(), out.input_ids) == rendered_text(segs)
    k = out.input_ids.index(77091)
    assert out.input_ids[k + 1:k + 3] == [198, 198] and out.labels[k + 1:k + 3] == [-100, 198]
    with pytest.raises(Reject) as exc:
        t.render(rec((U, "Poem?"), (A, "\nRoses are red.")))
    assert exc.value.rejection.reason == "template_mismatch"


def test_tokenizer_template_think_block_is_prompt():
    """The empty think block Qwen3 renders before the last reply is prompt, not supervised."""
    segs, out = tokenize(qwen(), get_template("tokenizer", "qwen3"), RECORDS["text_only"])
    k = out.input_ids.index(151667)  # <think>
    assert out.labels[k] == -100 and out.input_ids[k:k + 4] == [151667, 271, 151668, 271]


def test_tokenizer_template_missing(tmp_path):
    import shutil

    from parsit_data.format import bundled_qwen3_tokenizer

    for f in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copy(bundled_qwen3_tokenizer() / f, tmp_path / f)
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>"}')
    with pytest.raises(ParsitError, match="no chat template"):
        get_template("tokenizer", tmp_path)


def test_unknown_template_and_policy():
    with pytest.raises(ParsitError, match="unknown template"):
        get_template("chatgpt")
    with pytest.raises(ParsitError, match="not available for template 'qwen3'.*--template qwen_1_5"):
        get_template("qwen3").render(RECORDS["text_only"], None, "llava-next")
