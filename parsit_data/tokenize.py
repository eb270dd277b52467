"""Segments to ``input_ids`` and ``labels``, batched over a partition.

Each text segment is split at ``<image>`` (each placeholder becomes the single id -200, the LLaVA
convention, as ``tokenizer_image_token`` does at inference) and every piece is encoded on its own with
``add_special_tokens=False``; control-token segments map straight to their id. Labels equal the ids of
supervised segments and -100 elsewhere; this is the one place the mask becomes labels.

Speed: a partition's pieces are encoded in one ``encode_batch`` call (Rust, multi-threaded), and short
pieces that repeat across records (``\\n``, ``assistant\\n``, the system prompt) are cached.

A label policy may also name tokens that are supervised wherever they occur (``llava-next``: every
``<|im_start|>``, ``<|im_end|>`` and ``\\n``); that rule is applied here too, after the segment flags.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

from parsit_data.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX
from parsit_data.errors import ParsitError
from parsit_data.templates.base import Segment

_CACHE_MAX_CHARS = 256
_CACHE_MAX_ENTRIES = 200_000


@dataclass(slots=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    #: For each turn index, the number of tokens up to and including that turn's segments.
    turn_ends: dict[int, int]
    supervised: int = 0


class SegmentTokenizer:
    """Tokenizes segment lists; one instance per worker (it owns the piece cache)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self._special: dict[str, int] = {}
        self._cache: dict[str, list[int]] = {}
        self._one: dict[str, int | None] = {}

    def special_id(self, token: str) -> int:
        tid = self._special.get(token)
        if tid is None:
            tid = self.tok.token_to_id(token)
            if tid is None:
                raise ParsitError(f"the tokenizer has no token {token!r}, which the template needs")
            self._special[token] = tid
        return tid

    def _encode_pieces(self, pieces: set[str]) -> dict[str, list[int]]:
        todo = [p for p in pieces if p not in self._cache]
        out = {p: self._cache[p] for p in pieces if p in self._cache}
        if todo:
            # encode_batch_fast skips character offsets, which Parsit never needs.
            encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
            encs = encode(todo, add_special_tokens=False)
            for p, e in zip(todo, encs):
                ids = e.ids
                out[p] = ids
                if len(p) <= _CACHE_MAX_CHARS and len(self._cache) < _CACHE_MAX_ENTRIES:
                    self._cache[p] = ids
        return out

    def token_id(self, text: str) -> int:
        """The id of ``text`` when the tokenizer encodes it as exactly one token."""
        if self._one.get(text) is not None:
            return self._one[text]
        ids = self.tok.encode(text, add_special_tokens=False).ids
        self._one[text] = ids[0] if len(ids) == 1 else None
        if len(ids) != 1:
            raise ParsitError(f"{text!r} is not one token for this tokenizer, which the label policy needs")
        return ids[0]

    def tokenize_batch(self, batch: list[list[Segment]], unmask: tuple[str, ...] = ()) -> list[Tokenized]:
        """Tokenize each segment list; ``unmask``: tokens supervised wherever they occur (policy rule)."""
        unmask_ids = frozenset(self.token_id(t) for t in unmask)
        pieces: set[str] = set()
        for segs in batch:
            for s in segs:
                if not s.special:
                    for p in s.text.split(IMAGE_PLACEHOLDER):
                        if p:
                            pieces.add(p)
        enc = self._encode_pieces(pieces)
        out: list[Tokenized] = []
        special = self._special
        for segs in batch:
            ids: list[int] = []
            labels: list[int] = []
            turn_ends: dict[int, int] = {}
            supervised = 0
            for text, is_special, is_supervised, turn in segs:
                if is_special:
                    tid = special.get(text)
                    new = [tid if tid is not None else self.special_id(text)]
                elif IMAGE_PLACEHOLDER in text:
                    new = []
                    for k, p in enumerate(text.split(IMAGE_PLACEHOLDER)):
                        if k:
                            new.append(IMAGE_TOKEN_INDEX)
                        if p:
                            new.extend(enc[p])
                else:
                    new = enc[text] if text else []
                ids.extend(new)
                if is_supervised:
                    labels.extend(new)
                    supervised += len(new)
                else:
                    labels.extend([IGNORE_INDEX] * len(new))
                turn_ends[turn] = len(ids)
            if unmask_ids:
                for k, x in enumerate(ids):
                    if x in unmask_ids and labels[k] == IGNORE_INDEX:
                        labels[k] = x
                        supervised += 1
            out.append(Tokenized(ids, labels, turn_ends, supervised))
        return out


def check_segmentable(tok: Tokenizer) -> None:
    """Refuse a tokenizer whose pieces do not concatenate (it adds a prefix space to every call).

    Segment-wise tokenization relies on ``decode(encode(a) + encode(b)) == a + b``. SentencePiece-style
    tokenizers in legacy mode prepend "▁" to each input, so every segment would gain a space that the
    rendered text does not have.
    """
    a = tok.encode("Hello", add_special_tokens=False).ids
    b = tok.encode(" world\n", add_special_tokens=False).ids
    c = tok.encode("\nok", add_special_tokens=False).ids
    got = tok.decode(a + b + c, skip_special_tokens=False)
    if got != "Hello world\n\nok":
        raise ParsitError(
            "this tokenizer does not tokenize text piece by piece faithfully (decoding 'Hello' + ' world\\n' + "
            f"'\\nok' gives {got!r}; it probably adds a prefix space to every input): Parsit tokenizes each "
            "segment on its own; use a tokenizer.json without a Prepend/Metaspace prefix (legacy=False)"
        )


def decode_ids(tok: Tokenizer, ids: list[int], image_text: str = IMAGE_PLACEHOLDER) -> str:
    """Decode ``input_ids`` back to text, each -200 read as the image placeholder."""
    out: list[str] = []
    run: list[int] = []
    for x in ids:
        if x == IMAGE_TOKEN_INDEX:
            if run:
                out.append(tok.decode(run, skip_special_tokens=False))
                run = []
            out.append(image_text)
        else:
            run.append(x)
    if run:
        out.append(tok.decode(run, skip_special_tokens=False))
    return "".join(out)


def supervised_runs(ids: list[int], labels: list[int]) -> list[tuple[bool, list[int]]]:
    """Consecutive tokens grouped by whether they are supervised, in order."""
    runs: list[tuple[bool, list[int]]] = []
    for x, y in zip(ids, labels):
        sup = y != IGNORE_INDEX
        if runs and runs[-1][0] == sup:
            runs[-1][1].append(x)
        else:
            runs.append((sup, [x]))
    return runs


def marked_text(tok: Tokenizer, ids: list[int], labels: list[int], open_mark: str = "⟦", close_mark: str = "⟧") -> str:
    """The decoded text with each run of supervised tokens between ``open_mark`` and ``close_mark``."""
    return "".join(f"{open_mark}{decode_ids(tok, run)}{close_mark}" if sup else decode_ids(tok, run)
                   for sup, run in supervised_runs(ids, labels))
