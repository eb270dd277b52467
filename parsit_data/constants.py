"""Constants shared by the writer (parsit_data) and the reader (parsit_train).

This module is the whole contract between the two stages, together with ``manifest.json``: the Arrow
schema of a shard row, the sentinel ids, and the file layout of a build directory.
"""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 1

#: One image placeholder in ``input_ids`` (the LLaVA convention). The collator expands it.
IMAGE_TOKEN_INDEX = -200
#: Label value of a position that is not supervised.
IGNORE_INDEX = -100
#: The placeholder as it is written in record text.
IMAGE_PLACEHOLDER = "<image>"

MANIFEST_NAME = "manifest.json"
QUARANTINE_NAME = "quarantine.jsonl"
REPORT_JSON_NAME = "report.json"
REPORT_HTML_NAME = "report.html"
SHARDS_DIR = "shards"
#: Per-partition bookkeeping of an unfinished or finished build (stats, quarantine parts).
PARTS_DIR = "_parts"


def shard_name(partition: int) -> str:
    """File name of a partition's shard; sorting the names gives input order."""
    return f"shard-{partition:05d}.arrow"


IMAGE_SIZE_TYPE = pa.struct([("width", pa.int32()), ("height", pa.int32())])

#: The columns of every shard, in order. Written as the Arrow IPC *stream* format (what HF datasets
#: writes and memory-maps with ``datasets.Dataset.from_file``).
SHARD_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("labels", pa.list_(pa.int32()), nullable=False),
        # Multimodal length: text tokens - placeholders + visual tokens.
        pa.field("length", pa.int32(), nullable=False),
        pa.field("num_image_tokens", pa.list_(pa.int32()), nullable=False),
        # Encoded image files (original bytes, or re-encoded at --image-max-side).
        pa.field("images", pa.list_(pa.binary()), nullable=False),
        # Each image's ORIGINAL width/height, before any re-encoding.
        pa.field("image_sizes", pa.list_(IMAGE_SIZE_TYPE), nullable=False),
        # Image paths relative to the image root, as the record named them.
        pa.field("image_paths", pa.list_(pa.string()), nullable=False),
        pa.field("num_turns", pa.int32(), nullable=False),
        pa.field("supervised_tokens", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
    ],
    metadata={b"parsit.format_version": str(FORMAT_VERSION).encode()},
)
