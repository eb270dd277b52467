"""Segments to ``input_ids`` and ``labels``, batched over a partition.

Each text segment is split at ``<image>`` (each placeholder becomes the single id -200, the LLaVA
convention, as ``tokenizer_image_token`` does at inference) and every piece is encoded on its own with
``add_special_tokens=False``; control-token segments map straight to their id. Labels equal the ids of
supervised segments and -100 elsewhere; this is the one place the mask becomes labels.

Speed: a partition's pieces are encoded in one ``encode_batch`` call (Rust, multi-threaded), and short
pieces that repeat across records (``\\n``, ``assistant\\n``, the system prompt) are cached.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

from parsit_data.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX
from parsit_data.errors import ParsitError
from parsit_data.templates import Segment

_CACHE_MAX_CHARS = 256
_CACHE_MAX_ENTRIES = 200_000


@dataclass(slots=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    #: For each turn index, the number of tokens up to and including that turn's segments.
    turn_ends: dict[int, int]


class SegmentTokenizer:
    """Tokenizes segment lists; one instance per worker (it owns the piece cache)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self._special: dict[str, int] = {}
        self._cache: dict[str, list[int]] = {}

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
            encs = self.tok.encode_batch(todo, add_special_tokens=False)
            for p, e in zip(todo, encs):
                ids = e.ids
                out[p] = ids
                if len(p) <= _CACHE_MAX_CHARS and len(self._cache) < _CACHE_MAX_ENTRIES:
                    self._cache[p] = ids
        return out

    def tokenize_batch(self, batch: list[list[Segment]]) -> list[Tokenized]:
        pieces: set[str] = set()
        for segs in batch:
            for s in segs:
                if not s.special:
                    for p in s.text.split(IMAGE_PLACEHOLDER):
                        if p:
                            pieces.add(p)
        enc = self._encode_pieces(pieces)
        out: list[Tokenized] = []
        for segs in batch:
            ids: list[int] = []
            labels: list[int] = []
            turn_ends: dict[int, int] = {}
            for s in segs:
                if s.special:
                    new = [self.special_id(s.text)]
                else:
                    new = []
                    parts = s.text.split(IMAGE_PLACEHOLDER)
                    for k, p in enumerate(parts):
                        if k:
                            new.append(IMAGE_TOKEN_INDEX)
                        if p:
                            new.extend(enc[p])
                ids.extend(new)
                labels.extend(new if s.supervised else [IGNORE_INDEX] * len(new))
                turn_ends[s.turn] = len(ids)
            out.append(Tokenized(ids, labels, turn_ends))
        return out
