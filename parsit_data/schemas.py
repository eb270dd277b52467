"""JSON Schemas of the build stage's public formats, generated from the pydantic models.

``schemas/*.schema.json`` in the repository are these, committed, so that users (and other languages)
can validate records and read manifests without Parsit. ``parsit-data schema`` rewrites them;
``parsit-data schema --check`` (and a test) fails when the committed files drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from parsit_data.format import Manifest
from parsit_data.records import InputRecord, QuarantineRecord

DRAFT = "https://json-schema.org/draft/2020-12/schema"

#: file stem -> model. Input records ("sample"), quarantine.jsonl lines, manifest.json.
MODELS: dict[str, type[BaseModel]] = {
    "sample": InputRecord,
    "quarantine": QuarantineRecord,
    "manifest": Manifest,
}


def schema_text(model: type[BaseModel]) -> str:
    """The schema as committed: validation mode, sorted keys, two-space indent, trailing newline."""
    doc = {"$schema": DRAFT, **model.model_json_schema(mode="validation")}
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def schema_files() -> dict[str, str]:
    return {f"{stem}.schema.json": schema_text(model) for stem, model in MODELS.items()}


def write_schemas(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_files().items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written


def drifted(schema_dir: str | Path) -> list[str]:
    """Names of the schema files in ``schema_dir`` that are missing or differ from the models."""
    d = Path(schema_dir)
    return [name for name, text in schema_files().items()
            if not (d / name).is_file() or (d / name).read_text(encoding="utf-8") != text]
