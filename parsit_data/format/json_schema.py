"""JSON Schemas of the pydantic models, exported one way: the committed files under ``schemas/``.

Every schema file (records, quarantine lines, manifests, the report, the training config) is written by
:func:`schema_text`, so they share one dialect, one layout and one drift check (:func:`drifted_text`).
Both stages use it; it is here because those files are the published part of the contract.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def schema_document(model: type[BaseModel], title: str | None = None) -> dict:
    """The model's validation-mode JSON Schema, with its dialect (and ``title`` when given)."""
    doc = {"$schema": DRAFT, **model.model_json_schema(mode="validation")}
    if title is not None:
        doc["title"] = title
    return doc


def schema_text(model: type[BaseModel], title: str | None = None) -> str:
    """The schema as committed: sorted keys, two-space indent, UTF-8, trailing newline."""
    return json.dumps(schema_document(model, title), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schema(model: type[BaseModel], path: str | Path, title: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(schema_text(model, title), encoding="utf-8")
    return path


def drifted_text(path: str | Path, text: str) -> bool:
    """True when the committed file at ``path`` is missing or differs from ``text``."""
    path = Path(path)
    return not path.is_file() or path.read_text(encoding="utf-8") != text
