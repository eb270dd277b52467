"""JSON Schemas of the build stage's public formats, generated from the pydantic models.

``schemas/*.schema.json`` in the repository are these, committed, so that users (and other languages)
can validate records and read manifests without Parsit. ``parsit-data schema`` rewrites them;
``parsit-data schema --check`` (and a test) fails when the committed files drift from the models.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from parsit_data.format import Manifest, schema_text
from parsit_data.format.json_schema import drifted_text
from parsit_data.records import InputRecord, QuarantineRecord

#: file stem -> model. Input records ("sample"), quarantine.jsonl lines, manifest.json.
MODELS: dict[str, type[BaseModel]] = {
    "sample": InputRecord,
    "quarantine": QuarantineRecord,
    "manifest": Manifest,
}


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
    return [name for name, text in schema_files().items() if drifted_text(d / name, text)]
