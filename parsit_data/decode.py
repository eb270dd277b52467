"""The one decoder of built rows: ``input_ids`` + ``labels`` back to text, in runs of supervised tokens.

A row is cut into runs of consecutive tokens that are all supervised or all not (by its own labels,
so what is shown is what training supervises); each run into text pieces and images (each -200; a
video's -201 is shown as ``<video>``).
Every reader of a row uses :func:`decode_runs`: the template mask report (:func:`marked_text`), the
report's example rows (:func:`marked_spans`) and ``parsit-data inspect`` (:mod:`parsit_data.rowview`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from parsit_data.format import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX, VIDEO_PLACEHOLDER, VIDEO_TOKEN_INDEX

#: Start and end markers of supervised text in a mask report.
MARK_OPEN, MARK_CLOSE = "⟦", "⟧"

Decode = Callable[[list[int]], str]


def tokenizer_decode(tok) -> Decode:
    """Decode with a ``tokenizers.Tokenizer``, control tokens kept visible."""
    return lambda ids: tok.decode(ids, skip_special_tokens=False)


@dataclass(frozen=True, slots=True)
class Piece:
    """Decoded text of consecutive text tokens (``tokens`` of them), or one image (``text`` None)."""

    text: str | None
    tokens: int


@dataclass(frozen=True, slots=True)
class Run:
    supervised: bool
    pieces: list[Piece]

    def text(self, image_text: str = IMAGE_PLACEHOLDER) -> str:
        return "".join(image_text if p.text is None else p.text for p in self.pieces)


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


def _pieces(ids: list[int], decode: Decode) -> list[Piece]:
    out: list[Piece] = []
    text: list[int] = []
    for x in ids:
        if x == IMAGE_TOKEN_INDEX:
            if text:
                out.append(Piece(decode(text), len(text)))
                text = []
            out.append(Piece(None, 1))
        elif x == VIDEO_TOKEN_INDEX:  # the video's place, shown as its placeholder
            if text:
                out.append(Piece(decode(text), len(text)))
                text = []
            out.append(Piece(VIDEO_PLACEHOLDER, 1))
        else:
            text.append(x)
    if text:
        out.append(Piece(decode(text), len(text)))
    return out


def decode_runs(ids: list[int], labels: list[int], decode: Decode) -> list[Run]:
    """The row as runs of supervised / unsupervised pieces (see the module docstring)."""
    return [Run(sup, _pieces(run, decode)) for sup, run in supervised_runs(ids, labels)]


def decode_ids(tok, ids: list[int], image_text: str = IMAGE_PLACEHOLDER) -> str:
    """Decode ``input_ids`` back to text, each -200 read as the image placeholder."""
    return Run(False, _pieces(ids, tokenizer_decode(tok))).text(image_text)


def marked_text(tok, ids: list[int], labels: list[int], open_mark: str = MARK_OPEN, close_mark: str = MARK_CLOSE) -> str:
    """The decoded text with each run of supervised tokens between ``open_mark`` and ``close_mark``."""
    return "".join(f"{open_mark}{r.text()}{close_mark}" if r.supervised else r.text()
                   for r in decode_runs(ids, labels, tokenizer_decode(tok)))


def marked_spans(ids: list[int], labels: list[int], decode: Decode) -> list[dict]:
    """The row as ``{"text", "supervised"}`` runs, each -200 written as ``<image>`` (the report's examples)."""
    return [{"text": r.text(), "supervised": r.supervised} for r in decode_runs(ids, labels, decode)]
