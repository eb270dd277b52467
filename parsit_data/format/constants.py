"""The fixed part of the contract: format version, sentinel ids, file layout, the shard row schema.

Everything a build directory holds is named here (the manifest's shape is :mod:`.manifest`, a shard's
bytes :mod:`.shards`), so the writer (``parsit_data``) and the reader (``parsit_train``) cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

#: Version 2 adds the build's config hash, tokenizer fingerprint and template name to each shard's
#: schema metadata (docs/FORMAT.md); rows, quarantine and manifest are as in version 1. Version 3 appends
#: the video columns (:data:`VIDEO_COLUMNS`) and the manifest's ``video`` entry.
FORMAT_VERSION = 3
#: Versions this reader opens: a version 1 build differs only in its shards' schema metadata; a version 1
#: or 2 shard has no video columns and reads as rows without video (:func:`.reader.map_shard` adds them).
READABLE_VERSIONS = (1, 2, 3)

#: One image placeholder in ``input_ids`` (the LLaVA convention). The collator expands it.
IMAGE_TOKEN_INDEX = -200
#: The video's place in ``input_ids`` (one per record at most); the collator expands it to
#: ``num_video_tokens`` copies of the model's video token id. Its label is :data:`IGNORE_INDEX`.
VIDEO_TOKEN_INDEX = -201
#: Label value of a position that is not supervised.
IGNORE_INDEX = -100
#: The placeholder as it is written in record text.
IMAGE_PLACEHOLDER = "<image>"
#: The video's placeholder in record text (the HF spelling; LLaVA's ``<image>`` beside a ``video`` field is
#: rewritten to it when the record is validated).
VIDEO_PLACEHOLDER = "<video>"

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


def _dir(out):
    """A build location: a local Path or a RemotePath (a string URI is opened)."""
    from parsit_data.format.fsio import location

    return location(out, "build")


@dataclass(frozen=True)
class BuildFiles:
    """Where each file of a build lives (a local Path or a RemotePath): :func:`build_files`."""

    root: Path
    manifest: Path  # the commit marker: written last (:func:`parsit_data.format.manifest.write_manifest`)
    quarantine: Path
    report_json: Path
    report_html: Path
    shards: Path  # the folder of shard-NNNNN.arrow
    parts: Path  # per-partition bookkeeping

    def shard(self, partition: int) -> Path:
        return self.shards / shard_name(partition)


def build_files(out) -> BuildFiles:
    """The paths of a build's files; every consumer names them through this."""
    root = _dir(out)
    return BuildFiles(root=root, manifest=root / MANIFEST_NAME, quarantine=root / QUARANTINE_NAME,
                      report_json=root / REPORT_JSON_NAME, report_html=root / REPORT_HTML_NAME,
                      shards=root / SHARDS_DIR, parts=root / PARTS_DIR)


def part_path(out: Path, index: int) -> Path:
    """A partition's commit marker: config hash, shard entry and statistics (written after its shard)."""
    return _dir(out) / PARTS_DIR / f"part-{index:05d}.json"


def quarantine_part_path(out: Path, index: int) -> Path:
    """A partition's quarantine lines; ``quarantine.jsonl`` is their concatenation in partition order."""
    return _dir(out) / PARTS_DIR / f"quarantine-{index:05d}.jsonl"


IMAGE_SIZE_TYPE = pa.struct([("width", pa.int32()), ("height", pa.int32())])

#: The source clip of a row's video: duration, average frame rate, size and frame count.
VIDEO_INFO_TYPE = pa.struct([("duration_s", pa.float64()), ("fps", pa.float64()), ("width", pa.int32()),
                             ("height", pa.int32()), ("frames", pa.int32())])

#: The video columns (format version 3), appended after the others, and their value in a row without video.
VIDEO_FIELDS = (
    # the clip's path as the record named it (relative to --video-root); null without video
    pa.field("video_path", pa.string(), nullable=True),
    # JPEG of each sampled frame, in time order, each frame once
    pa.field("video_frames", pa.list_(pa.binary()), nullable=False),
    # index of each sampled frame in the decoded stream (0-based)
    pa.field("video_frame_indices", pa.list_(pa.int32()), nullable=False),
    # seconds of each sampled frame from the clip's first frame
    pa.field("video_frame_times", pa.list_(pa.float32()), nullable=False),
    pa.field("video_info", VIDEO_INFO_TYPE, nullable=True),
    # visual tokens of the video, exactly what the build's processor makes (0 without video)
    pa.field("num_video_tokens", pa.int32(), nullable=False),
)
VIDEO_COLUMNS = tuple(f.name for f in VIDEO_FIELDS)
NO_VIDEO = {"video_path": None, "video_frames": [], "video_frame_indices": [], "video_frame_times": [],
            "video_info": None, "num_video_tokens": 0}

#: The columns of every row the trainer needs before the first step (lengths, modality, supervision): a
#: shard's *index*, read without the rows' token lists and image bytes (:func:`.reader.read_shard_index`).
INDEX_COLUMNS = ("sample_id", "length", "num_image_tokens", "supervised_tokens")

#: Schema metadata keys of a shard (see :class:`parsit_data.format.shards.ShardMeta`).
META_FORMAT_VERSION = b"parsit.format_version"
META_CONFIG_HASH = b"parsit.config_hash"
META_TOKENIZER_SHA256 = b"parsit.tokenizer_sha256"
META_TEMPLATE = b"parsit.template"

#: The columns of every shard, in order. Written as the Arrow IPC *stream* format (what HF datasets
#: writes and memory-maps with ``datasets.Dataset.from_file``). A written shard's schema also carries
#: the build's identity in its metadata (:func:`parsit_data.format.shards.shard_schema`).
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
        *VIDEO_FIELDS,
    ],
    metadata={META_FORMAT_VERSION: str(FORMAT_VERSION).encode()},
)
