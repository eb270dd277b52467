"""One shard row, decoded for a human: what ``parsit-data inspect`` shows.

A row is found by its position in the build (rows counted across shards in shard order) or by its
``sample_id``; its ``input_ids`` are decoded in runs of supervised and unsupervised tokens, and each
image placeholder (-200) is reported with the number of visual tokens the collator will expand it to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from parsit_data.constants import IMAGE_TOKEN_INDEX, MANIFEST_NAME
from parsit_data.errors import ParsitError
from parsit_data.tokenize import decode_ids, supervised_runs
from parsit_data.tokenizer import load_tokenizer


@dataclass
class Piece:
    kind: str  # "text" (not supervised), "supervised", or "image"
    text: str
    tokens: int  # text tokens in the piece, or the image's visual tokens


@dataclass
class RowView:
    index: int
    sample_id: str
    source: str
    length: int
    num_tokens: int
    supervised_tokens: int
    truncated: bool
    num_image_tokens: list[int]
    image_paths: list[str]
    input_ids: list[int]
    labels: list[int]
    template: dict = field(default_factory=dict)
    pieces: list[Piece] = field(default_factory=list)


def _manifest(build_dir: Path) -> dict:
    f = build_dir / MANIFEST_NAME
    if not f.is_file():
        raise ParsitError(f"{build_dir} has no {MANIFEST_NAME}: it is not a finished build (run parsit-data build)")
    return json.loads(f.read_text(encoding="utf-8"))


def _read_shard(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_stream(src).read_all()


def _find(build_dir: Path, manifest: dict, index: int | None, sample_id: str | None) -> tuple[int, dict]:
    total = sum(s["rows"] for s in manifest["shards"])
    if index is not None and not 0 <= index < total:
        raise ParsitError(f"--index {index} is out of range: the build has {total} rows (0..{total - 1})")
    start = 0
    for shard in manifest["shards"]:
        rows = shard["rows"]
        if index is not None and not start <= index < start + rows:
            start += rows
            continue
        table = _read_shard(build_dir / shard["path"])
        if index is not None:
            return index, table.slice(index - start, 1).to_pylist()[0]
        ids = table.column("sample_id").to_pylist()
        if sample_id in ids:
            k = ids.index(sample_id)
            return start + k, table.slice(k, 1).to_pylist()[0]
        start += rows
    raise ParsitError(f"no row has sample_id {sample_id!r} (quarantined records are in quarantine.jsonl)")


def load_row(build_dir: str | Path, index: int | None = None, sample_id: str | None = None,
             tokenizer: str | Path | None = None) -> RowView:
    """The row at ``index`` (default 0) or with ``sample_id``, decoded with the build's tokenizer."""
    if index is not None and sample_id is not None:
        raise ParsitError("pass either --index or --id, not both")
    build_dir = Path(build_dir)
    manifest = _manifest(build_dir)
    if index is None and sample_id is None:
        index = 0
    pos, row = _find(build_dir, manifest, index, sample_id)
    tok = load_tokenizer(tokenizer or manifest["tokenizer"]["path"])
    view = RowView(
        index=pos, sample_id=row["sample_id"], source=row["source"], length=row["length"],
        num_tokens=len(row["input_ids"]), supervised_tokens=row["supervised_tokens"], truncated=row["truncated"],
        num_image_tokens=row["num_image_tokens"], image_paths=row["image_paths"], input_ids=row["input_ids"],
        labels=row["labels"], template=manifest.get("template", {}),
    )
    image_i = 0
    for sup, run in supervised_runs(row["input_ids"], row["labels"]):
        text: list[int] = []
        for x in run + [None]:
            if x is None or x == IMAGE_TOKEN_INDEX:
                if text:
                    view.pieces.append(Piece("supervised" if sup else "text", decode_ids(tok, text), len(text)))
                    text = []
                if x is not None:
                    n = row["num_image_tokens"][image_i] if image_i < len(row["num_image_tokens"]) else 0
                    view.pieces.append(Piece("image", f"<image {image_i + 1}: {n} visual tokens>", n))
                    image_i += 1
            else:
                text.append(x)
    return view
