"""The build directory format: the contract between the build stage and the trainer.

One package holds all of it, so a format change is one edit:

- :mod:`.constants`: format version, sentinel ids (-200 image, -201 video, -100 ignore), file layout (:func:`build_files`:
  the path of each file of a build), the shard schema and its index columns;
- :mod:`.manifest`: ``manifest.json`` as a typed model (the build constructs one; :func:`write_manifest`);
- :mod:`.shards`: the shard writer (atomic, checksummed) and a shard's identity in its schema metadata;
- :mod:`.reader`: :func:`open_build`, the one reader (typed manifest, verification, zero-copy batches), and a
  shard's batches or index (:func:`shard_batches`, :func:`read_shard_index`) for whoever reads shards alone;
- :mod:`.tokenizer_files` and :mod:`.vision`: the tokenizer fingerprint and the vision geometry, which
  both stages must compute the same way;
- :mod:`.json_schema`: the one exporter of the committed ``schemas/*.schema.json`` files.

The trainer imports from ``parsit_data`` only this package and :mod:`parsit_data.errors`
(tests/test_imports.py checks). docs/FORMAT.md describes the format in prose.
"""

from parsit_data.format.constants import (FORMAT_VERSION, IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_SIZE_TYPE,
                                          IMAGE_TOKEN_INDEX, INDEX_COLUMNS, MANIFEST_NAME, PARTS_DIR,
                                          QUARANTINE_NAME, READABLE_VERSIONS, REPORT_HTML_NAME, REPORT_JSON_NAME,
                                          SHARD_SCHEMA, SHARDS_DIR, VIDEO_COLUMNS, VIDEO_INFO_TYPE, VIDEO_PLACEHOLDER,
                                          VIDEO_TOKEN_INDEX, BuildFiles, build_files, part_path,
                                          quarantine_part_path, shard_name)
from parsit_data.format.json_schema import schema_document, schema_text, write_schema
from parsit_data.format.manifest import (Manifest, ShardEntry, SourceCounts, SourceEntry, Timing, TokenizerEntry,
                                         Totals, VideoEntry, VisionEntry, load_manifest, write_manifest)
from parsit_data.format.video import VideoSpec
from parsit_data.format.reader import (Build, MappedShard, map_shard, open_build, read_index_file, read_part,
                                        read_shard, read_shard_index, read_shard_meta, read_shard_table,
                                        shard_batches, table_file_bytes, table_from_file_bytes, write_index_file)
from parsit_data.format.shards import ShardMeta, atomic_write_bytes, sha256_file, shard_schema, write_shard
from parsit_data.format.tokenizer_files import (bundled_qwen3_tokenizer, token_content, fingerprint,
                                                read_tokenizer_config, resolve_tokenizer_path)
from parsit_data.format.vision import Aspect, VisionGeometry, select_best_resolution

__all__ = [
    "FORMAT_VERSION", "IGNORE_INDEX", "IMAGE_PLACEHOLDER", "IMAGE_SIZE_TYPE", "IMAGE_TOKEN_INDEX", "MANIFEST_NAME",
    "PARTS_DIR", "QUARANTINE_NAME", "READABLE_VERSIONS", "REPORT_HTML_NAME", "REPORT_JSON_NAME", "SHARD_SCHEMA",
    "SHARDS_DIR", "VIDEO_COLUMNS", "VIDEO_INFO_TYPE", "VIDEO_PLACEHOLDER", "VIDEO_TOKEN_INDEX", "INDEX_COLUMNS",
    "BuildFiles", "build_files", "part_path", "quarantine_part_path", "shard_name",
    "Manifest", "ShardEntry", "SourceCounts", "SourceEntry", "Timing", "TokenizerEntry", "Totals", "VideoEntry",
    "VisionEntry", "VideoSpec",
    "load_manifest", "write_manifest",
    "Build", "MappedShard", "map_shard", "open_build", "read_part", "read_shard", "read_shard_meta",
    "read_shard_index", "shard_batches", "read_index_file", "write_index_file",
    "ShardMeta", "atomic_write_bytes", "sha256_file", "shard_schema", "write_shard",
    "bundled_qwen3_tokenizer", "token_content", "fingerprint", "read_tokenizer_config", "resolve_tokenizer_path",
    "Aspect", "VisionGeometry", "select_best_resolution", "schema_document", "schema_text", "write_schema",
]
