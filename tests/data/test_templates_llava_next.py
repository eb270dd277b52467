"""Label policy ``llava-next``: LLaVA-NeXT's ``preprocess_qwen`` id for id.

Two kinds of evidence: explicit id lists checked by hand (the ids of each word are those of the design
notes' worked example), and an oracle that re-runs upstream's algorithm through transformers' own
tokenizer (``apply_chat_template`` with upstream's per-turn template, ``<image>`` added as a special
token, ids 198/<|im_start|>/<|im_end|> unmasked everywhere).
"""

from __future__ import annotations

import copy

import pytest

from parsit_data.errors import ParsitError
from parsit_data.templates import get_template
from tests.data.templates_support import hf_qwen, qwen, rec, tokenize

U, A, S = "user", "assistant", "system"
X = -100
SYSTEM_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]
SYSTEM_LABELS = [151644, X, 198, X, X, X, X, X, X, 151645, 198]
USER1_IDS = [151644, 872, 198, -200, 198, 3838, 374, 279, 2265, 30, 151645, 198]  # user\n<image>\nWhat is the title?
USER1_LABELS = [151644, X, 198, X, 198, X, X, X, X, X, 151645, 198]
ASSISTANT1 = [151644, 77091, 198, 80496, 8259, 220, 17, 15, 17, 18, 13, 151645, 198]  # assistant\nAnnual Report 2023.
USER2_IDS = [151644, 872, 198, 3838, 374, 279, 2265, 30, 151645, 198]  # user\nWhat is the title?
USER2_LABELS = [151644, X, 198, X, X, X, X, X, 151645, 198]
ASSISTANT2 = [151644, 77091, 198, 17, 15, 17, 18, 13, 151645, 198]  # assistant\n2023.


def run(record, system_prompt=None):
    return tokenize(qwen(), get_template("qwen_1_5"), record, "llava-next", system_prompt)[1]


@pytest.mark.parametrize("question", ["<image>\nWhat is the title?", "What is the title?<image>",
                                      "  What is the title?\n<image>\n"])
def test_single_round_by_hand(question):
    out = run(rec((U, question), (A, "Annual Report 2023."), images=1))
    assert out.input_ids == SYSTEM_IDS + USER1_IDS + ASSISTANT1
    assert out.labels == SYSTEM_LABELS + USER1_LABELS + ASSISTANT1


def test_multi_round_by_hand():
    # the record's system turn is dropped; the image is moved to the front of its turn
    out = run(rec((S, "Ignored by upstream."), (U, "What is the title?\n<image>"), (A, "Annual Report 2023."),
                  (U, "What is the title?"), (A, "2023."), images=1))
    assert out.input_ids == SYSTEM_IDS + USER1_IDS + ASSISTANT1 + USER2_IDS + ASSISTANT2
    assert out.labels == SYSTEM_LABELS + USER1_LABELS + ASSISTANT1 + USER2_LABELS + ASSISTANT2


def test_system_prompt_override_like_upstream_system_message():
    out = run(rec((U, "What is the title?"), (A, "2023.")), system_prompt="You are a helpful assistant.")
    assert out.input_ids[:11] == SYSTEM_IDS
    other = run(rec((U, "What is the title?"), (A, "2023.")), system_prompt="Be brief.")
    assert other.input_ids[:3] == [151644, 8948, 198] and other.input_ids[3:5] != SYSTEM_IDS[3:5]


def test_only_qwen_1_5_has_it():
    for name in ("qwen3", "parsit", "llava_v1", "llama3"):
        with pytest.raises(ParsitError, match="llava-next"):
            get_template(name).render(rec((U, "a"), (A, "b")), None, "llava-next")


# --- oracle: upstream's algorithm, through transformers -------------------------------------------------

UPSTREAM_CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                          "{{ '<|im_start|>assistant\n' }}{% endif %}")


def upstream_multimodal(value: str) -> str:
    """preprocess_multimodal on one sentence (is_multimodal, no im_start/end, not mmtag)."""
    if value.count("<image>") == 1 and not value.startswith("<image>"):
        value = value.replace("<image>", "").strip()
        value = ("<image>" + "\n" + value).strip()
    return value.replace("QA_GT_caption_based_noisy", "")


@pytest.fixture(scope="module")
def upstream():
    base = hf_qwen()
    tokenizers = {}
    for has_image in (False, True):
        t = copy.deepcopy(base)
        if has_image:
            t.add_tokens(["<image>"], special_tokens=True)
        t.chat_template = UPSTREAM_CHAT_TEMPLATE
        tokenizers[has_image] = t

    def encode(t, msgs):
        r = t.apply_chat_template(msgs)
        return list(r["input_ids"] if hasattr(r, "keys") else r)

    def preprocess_qwen(conversations, has_image, system_message="You are a helpful assistant."):
        t = tokenizers[has_image]
        image_token_index = t.convert_tokens_to_ids("<image>") if has_image else None
        # upstream: im_start, im_end = tokenizer.additional_special_tokens_ids (Qwen2 lists exactly these two)
        im_start, im_end = t.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
        unmask = [198, im_start, im_end]
        if has_image:
            conversations = [{"from": c["from"], "value": upstream_multimodal(c["value"])} for c in conversations]
        roles = {"human": "user", "gpt": "assistant"}
        if roles[conversations[0]["from"]] != roles["human"]:
            conversations = conversations[1:]
        input_id = encode(t, [{"role": "system", "content": system_message}])
        target = [X] * len(input_id)
        for c in conversations:
            role = roles.get(c["from"], c["from"])
            ids = encode(t, [{"role": role, "content": c["value"]}])
            input_id += ids
            target += [X] * len(ids) if role in ("user", "system") else ids
        for k, x in enumerate(input_id):
            if x in unmask:
                target[k] = x
            if x == image_token_index:
                input_id[k] = -200
        return input_id, target

    return preprocess_qwen


ORACLE_RECORDS = {
    "front": ([("human", "<image>\nWhat is the title?"), ("gpt", "Annual Report 2023.")], 1),
    "front_no_newline": ([("human", "<image>Describe it."), ("gpt", "A page.")], 1),
    "moved": ([("human", "Read this page:\n\n<image>  \n"), ("gpt", "It says hello.\n")], 1),
    "two_in_one_turn": ([("human", "Left <image> and right <image>."), ("gpt", "Both are invoices.")], 2),
    "one_per_turn": ([("human", "First: <image>"), ("gpt", "One."), ("human", "Second: <image>"), ("gpt", "Two.")], 2),
    "multi_round_text": ([("human", "Line one\nline two\n"), ("gpt", "\nA reply\nwith newlines\n"),
                          ("human", "Unicode: 東京 🌧️ Tōkyō"), ("gpt", "  ☔ — ja.\n\n")], 0),
    "noisy_mark": ([("human", "<image>\nQA_GT_caption_based_noisy What?"), ("gpt", "QA_GT_caption_based_noisyA cat.")], 1),
    "unanswered": ([("human", "Hi"), ("gpt", "Hello."), ("human", "Bye\n")], 0),
}


@pytest.mark.parametrize("name", sorted(ORACLE_RECORDS))
def test_matches_upstream_oracle(upstream, name):
    conv, n_images = ORACLE_RECORDS[name]
    record = rec(*[({"human": U, "gpt": A}[f], v) for f, v in conv], images=n_images)
    out = run(record)
    ids, labels = upstream([{"from": f, "value": v} for f, v in conv], has_image=n_images > 0)
    assert out.input_ids == ids
    assert out.labels == labels
