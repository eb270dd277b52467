"""Shared fixtures for the template tests: records, the inference-style reference, small tokenizers.

The reference tokenization is what inference does, computed independently of the template code: the
text before each reply (the prompt, up to and including its header) is encoded in one call, each reply
is encoded in a call of its own, and so on to the end; ``<image>`` splits the text into chunks encoded
separately with -200 between them (``tokenizer_image_token``). The templates must reproduce it exactly.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
               "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from parsit_data.format import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX  # noqa: E402
from parsit_data.records import Record, Turn  # noqa: E402
from parsit_data.templates import rendered_text  # noqa: E402
from parsit_data.decode import decode_ids, supervised_runs  # noqa: E402
from parsit_data.encode import SegmentTokenizer  # noqa: E402
from parsit_data.format import bundled_qwen3_tokenizer  # noqa: E402
from parsit_data.tokenizer import load_tokenizer  # noqa: E402


@lru_cache(maxsize=1)
def qwen() -> Tokenizer:
    return load_tokenizer(bundled_qwen3_tokenizer())


def rec(*turns: tuple[str, str], images: int = 0, sid: str = "r") -> Record:
    return Record(sample_id=sid, source="test", position=0, turns=[Turn(role=r, content=c) for r, c in turns],
                  images=[f"img{i}.png" for i in range(images)])


U, A, S = "user", "assistant", "system"

#: The record shapes every template is checked on.
RECORDS: dict[str, Record] = {
    "multi_round": rec((U, "<image>\nWhat is the title?"), (A, "Annual Report 2023."),
                       (U, "Who signed it?"), (A, "The chair, J. Smith."),
                       (U, "When?"), (A, "On 3 March."), images=1),
    "text_only": rec((U, "Name a prime number."), (A, "Seven is prime.")),
    "multi_image": rec((U, "Compare <image> with\n<image>, please."), (A, "The second page has a table."),
                       (U, "And this one? <image>"), (A, "It is blank."), images=3),
    "unicode": rec((U, "Übersetze: 東京の天気は？ 🌧️"), (A, "Das Wetter in Tōkyō ist regnerisch ☔ — leider.")),
    "leading_newline": rec((U, "Write a poem."), (A, "\nRoses are red,\nviolets are blue."),
                           (U, "Another, starting with spaces."), (A, "  Indented\n\n  verse.")),
    "system_turn": rec((S, "Answer in French."), (U, "Hello?"), (A, "Bonjour !")),
    "unanswered": rec((U, "First?"), (A, "One."), (U, "Second, never answered.")),
}


def encode_chunk(tok: Tokenizer, text: str) -> list[int]:
    """``tokenizer_image_token`` on one chunk: text around each <image> encoded on its own."""
    ids: list[int] = []
    for k, part in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if k:
            ids.append(IMAGE_TOKEN_INDEX)
        if part:
            ids += tok.encode(part, add_special_tokens=False).ids
    return ids


def reply_spans(text: str, replies: list[str]) -> list[tuple[int, int]]:
    """Character spans of the given reply texts, found in order."""
    spans, pos = [], 0
    for r in replies:
        a = text.index(r, pos)
        spans.append((a, a + len(r)))
        pos = a + len(r)
    return spans


def inference_reference(tok: Tokenizer, text: str, spans: list[tuple[int, int]]) -> list[int]:
    """Prompt chunks encoded in one call each, replies each on their own (see the module docstring)."""
    ids, pos = [], 0
    for a, b in spans:
        ids += encode_chunk(tok, text[pos:a])
        ids += encode_chunk(tok, text[a:b])
        pos = b
    return ids + encode_chunk(tok, text[pos:])


def tokenize(tok: Tokenizer, template, record: Record, policy: str = "native", system_prompt=None):
    segs = template.render(record, system_prompt, policy)
    out = SegmentTokenizer(tok).tokenize_batch([segs], template.unmask_tokens(policy))[0]
    return segs, out


def check_boundaries(tok: Tokenizer, template, record: Record, expected_text: str, reply_prefix: str = "",
                     eot: str | None = None, system_prompt=None) -> list[int]:
    """The token-boundary rule and the exact supervised spans, for one record. Returns input_ids."""
    segs, out = tokenize(tok, template, record, system_prompt=system_prompt)
    text = rendered_text(segs)
    assert text == expected_text
    # decoding gives back the rendered text
    assert decode_ids(tok, out.input_ids) == text
    # prompts are encoded in one go, replies on their own: exactly the inference reference
    replies = [reply_prefix + t.content for t in record.turns if t.role == "assistant"]
    assert out.input_ids == inference_reference(tok, text, reply_spans(text, replies))
    # labels: ids where supervised, IGNORE elsewhere; supervised runs decode to reply (+ end of turn)
    assert len(out.labels) == len(out.input_ids)
    assert all(y in (x, IGNORE_INDEX) for x, y in zip(out.input_ids, out.labels))
    got = [decode_ids(tok, run) for sup, run in supervised_runs(out.input_ids, out.labels) if sup]
    assert got == [r + (eot or "") for r in replies]
    # truncation cuts at turn ends: each assistant turn's end falls right after its end-of-turn token
    answered = [i for i, t in enumerate(record.turns) if t.role == "assistant"]
    for i, r in zip(answered, replies):
        head = decode_ids(tok, out.input_ids[:out.turn_ends[i]])
        assert head.rstrip("\n").endswith(r + (eot or "")) or head.endswith(r + (eot or ""))
    return out.input_ids


# ---------------------------------------------------------------------------------------------------
# Small tokenizers with the right special tokens, trained offline on a few sentences.

CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: What is the title? ASSISTANT: The title is Annual Report 2023.",
    "You are a helpful language and vision assistant.\n\nThe user provides visual content.",
    "system\n\nuser\n\nassistant\n\nRoses are red,\nviolets are blue.\n\n",
    "Who signed it? The chair, J. Smith. When? On 3 March. Seven is prime.",
]


def small_tokenizer(folder: Path, specials: list[str], bos: str | None, eos: str, chat_template: str | None = None,
                    pad: str | None = None) -> Path:
    """A byte-level BPE tokenizer (like Llama 3's) with ``specials`` as special added tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {"bos_token": bos, "eos_token": eos, "pad_token": pad or eos}
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


@lru_cache(maxsize=1)
def hf_qwen():
    """transformers' own tokenizer for the same files (loaded once per session: it is slow to import)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_qwen3_tokenizer()))
