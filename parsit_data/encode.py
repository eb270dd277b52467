"""Segments to ``input_ids`` and ``labels``, batched over a partition.

Each text segment is split at ``<image>`` and ``<video>`` (each placeholder becomes the single id -200 or
-201, the LLaVA convention, as ``tokenizer_image_token`` does at inference) and every piece is encoded on its own with
``add_special_tokens=False``; control-token segments map straight to their id. Labels equal the ids of
supervised segments and -100 elsewhere; this is the one place the mask becomes labels.

Speed: a partition's pieces are encoded in one ``encode_batch`` call (Rust, multi-threaded), and short
pieces that repeat across records (``\\n``, ``assistant\\n``, the system prompt) are cached.

A label policy may also name tokens that are supervised wherever they occur (``llava-next``: every
``<|im_start|>``, ``<|im_end|>`` and ``\\n``); that rule is applied here too, after the segment flags.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from tokenizers import Tokenizer

from parsit_data.format import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX, VIDEO_PLACEHOLDER, VIDEO_TOKEN_INDEX
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
        self._pool: ThreadPoolExecutor | None = None

    def special_id(self, token: str) -> int:
        tid = self._special.get(token)
        if tid is None:
            tid = self.tok.token_to_id(token)
            if tid is None:
                raise ParsitError(f"the tokenizer has no token {token!r}, which the template needs")
            self._special[token] = tid
        return tid

    def _encode(self, todo: list[str]) -> list[list[int]]:
        # encode_batch_fast skips character offsets, which Parsit never needs. It runs in Rust and
        # releases the GIL, so a submitted batch overlaps the Python work on the next one.
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [e.ids for e in encode(todo, add_special_tokens=False)]

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
        return self.submit(batch, unmask).result()

    def submit(self, batch: list[list[Segment]], unmask: tuple[str, ...] = ()) -> "PendingBatch":
        """Start encoding ``batch`` in the background; ``.result()`` assembles ids and labels.

        The pieces (text between control tokens and placeholders) that the cache does not hold are
        encoded on this tokenizer's own thread while the caller goes on (validating the next chunk,
        assembling the previous one). Results do not depend on the overlap: a piece encodes the same
        whether it comes from the cache, this batch or another one.
        """
        unmask_ids = frozenset(self.token_id(t) for t in unmask)
        cache, special = self._cache, self._special
        todo: dict[str, None] = {}  # ordered set: the same pieces in the same order every run
        for segs in batch:
            for text, is_special, _, _ in segs:
                if is_special:
                    if text not in special:
                        self.special_id(text)  # an unknown control token fails here, in the caller
                elif IMAGE_PLACEHOLDER in text or VIDEO_PLACEHOLDER in text:
                    for p in split_placeholders(text):
                        if type(p) is str and p not in cache:
                            todo[p] = None
                elif text and text not in cache:
                    todo[text] = None
        pieces = list(todo)
        if not pieces:
            future: Future = Future()
            future.set_result([])
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parsit-encode")
            future = self._pool.submit(self._encode, pieces)
        return PendingBatch(self, batch, unmask_ids, pieces, future)

    def _assemble(self, batch: list[list[Segment]], unmask_ids: frozenset[int], fresh: dict[str, list[int]]
                  ) -> list[Tokenized]:
        """Ids and labels of each segment list; a piece is in ``fresh`` (this batch) or the cache."""
        out: list[Tokenized] = []
        special, cache, get = self._special, self._cache, fresh.get
        for segs in batch:
            ids: list[int] = []
            add, add_one = ids.extend, ids.append
            spans: list[list[int]] = []  # supervised [start, end) runs, adjacent segments merged
            turn_ends: dict[int, int] = {}
            for text, is_special, is_supervised, turn in segs:
                start = len(ids)
                if is_special:
                    add_one(special[text])
                elif IMAGE_PLACEHOLDER in text or VIDEO_PLACEHOLDER in text:
                    for p in split_placeholders(text):
                        if type(p) is int:
                            add_one(p)
                        else:
                            e = get(p)
                            add(e if e is not None else cache[p])
                elif text:
                    e = get(text)
                    add(e if e is not None else cache[text])
                end = len(ids)
                if is_supervised and end > start:
                    if spans and spans[-1][1] == start:
                        spans[-1][1] = end
                    else:
                        spans.append([start, end])
                turn_ends[turn] = end
            # Labels: -100 everywhere, then the supervised runs copied from the ids (slices run in C).
            labels = [IGNORE_INDEX] * len(ids)
            supervised = 0
            for start, end in spans:
                labels[start:end] = ids[start:end]
                supervised += end - start
            if unmask_ids:
                for k, x in enumerate(ids):
                    if x in unmask_ids and labels[k] == IGNORE_INDEX:
                        labels[k] = x
                        supervised += 1
            out.append(Tokenized(ids, labels, turn_ends, supervised))
        return out


def split_placeholders(text: str) -> list[str | int]:
    """``text`` as its non-empty pieces and, for each ``<image>`` / ``<video>``, its sentinel id (-200 / -201)."""
    out: list[str | int] = []
    for k, part in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if k:
            out.append(IMAGE_TOKEN_INDEX)
        for j, p in enumerate(part.split(VIDEO_PLACEHOLDER)):
            if j:
                out.append(VIDEO_TOKEN_INDEX)
            if p:
                out.append(p)
    return out


class PendingBatch:
    """A batch whose pieces are being encoded; :meth:`result` waits for them and builds the rows."""

    def __init__(self, owner: SegmentTokenizer, batch, unmask_ids, pieces, future: Future):
        self._owner, self._batch, self._unmask_ids = owner, batch, unmask_ids
        self._pieces, self._future = pieces, future

    def result(self) -> list[Tokenized]:
        owner = self._owner
        encoded = self._future.result()
        cache = owner._cache
        fresh = dict(zip(self._pieces, encoded))
        for p, ids in fresh.items():
            if len(p) <= _CACHE_MAX_CHARS and len(cache) < _CACHE_MAX_ENTRIES:
                cache[p] = ids
        return owner._assemble(self._batch, self._unmask_ids, fresh)


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
