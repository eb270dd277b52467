"""Loading the tokenizer for the build and describing it for the manifest (the pad token resolved).

Where a tokenizer folder is and its fingerprint are part of the format (both stages need them):
:mod:`parsit_data.format.tokenizer_files`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from parsit_data.errors import ParsitError
from parsit_data.format import fingerprint, read_tokenizer_config, resolve_tokenizer_path, token_content


@dataclass(frozen=True)
class TokenizerInfo:
    """What the manifest records about the tokenizer, and what the trainer checks against."""

    path: str
    sha256: str
    vocab_size: int
    pad_token: str
    pad_token_id: int
    eos_token: str | None
    eos_token_id: int | None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The fast tokenizer of a folder; loaded once per process (it is immutable once loaded)."""
    return _load_cached(str(resolve_tokenizer_path(path)))


@functools.lru_cache(maxsize=8)
def _load_cached(folder_str: str) -> Tokenizer:
    folder = Path(folder_str)
    try:
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:  # the Rust error says which field is wrong
        raise ParsitError(f"cannot load {folder / 'tokenizer.json'}: {exc}") from exc


def single_token_id(tok: Tokenizer, token: str) -> int | None:
    """The id of ``token`` if it is exactly one vocabulary entry, else None."""
    tid = tok.token_to_id(token)
    if tid is not None:
        return tid
    return None


def describe_tokenizer(path: str | Path, pad_token: str | None = None) -> tuple[Tokenizer, TokenizerInfo]:
    """Load the tokenizer and resolve the pad token, refusing what would train silently wrong.

    ``pad_token`` None means: the tokenizer's own (``tokenizer_config.json``). An empty string, a string
    that is not a single vocabulary entry, or no pad token at all are refused with a message that says
    what to pass.
    """
    folder = resolve_tokenizer_path(path)
    tok = load_tokenizer(folder)
    own = read_tokenizer_config(folder)
    if pad_token is None:
        pad_token = token_content(own.get("pad_token"))
        if pad_token is None:
            raise ParsitError(
                f"the tokenizer in {folder} defines no pad token: pass --pad-token TOKEN "
                "(for Qwen models, --pad-token '<|endoftext|>')"
            )
    if pad_token == "":
        raise ParsitError("--pad-token is empty: pass a token that is one vocabulary entry, e.g. '<|endoftext|>'")
    pad_id = single_token_id(tok, pad_token)
    if pad_id is None:
        raise ParsitError(
            f"pad token {pad_token!r} is not a single entry of the tokenizer's vocabulary: "
            "pass --pad-token with a token the tokenizer has (e.g. '<|endoftext|>')"
        )
    eos = token_content(own.get("eos_token"))
    eos_id = single_token_id(tok, eos) if eos else None
    info = TokenizerInfo(
        path=str(folder),
        sha256=fingerprint(folder),
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        pad_token=pad_token,
        pad_token_id=pad_id,
        eos_token=eos,
        eos_token_id=eos_id,
    )
    return tok, info
