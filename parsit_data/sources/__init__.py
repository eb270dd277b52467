"""Reading inputs: one small reader per container, one sampling rule, one normaliser of spellings.

| module | what |
|---|---|
| :mod:`.detect` | CLI inputs and YAML mixtures -> :class:`SourceSpec` (container from the path; wrong content refused by name) |
| :mod:`.jsonl`, :mod:`.jsonlist` | JSONL lines, JSON list elements (streamed) |
| :mod:`.arrow` | Parquet (row groups streamed), Arrow IPC files and ``datasets.save_to_disk`` folders |
| :mod:`.wds` | WebDataset tar shards (grouped by key) |
| :mod:`.sampling` | :func:`iter_source`, :func:`count_records`, :func:`sampled_count`: every read and every count |
| :mod:`.normalize` | chat ``messages`` with content parts -> the typed record's spelling |

Every reader yields :class:`RawItem`s (the record with its provenance: source, position, member),
including records that cannot be parsed (they carry the rejection), so ``read = kept + quarantined``
holds for every source whatever its container.
"""

from parsit_data.sources.detect import expand_inputs
from parsit_data.sources.jsonl import MAX_NESTING
from parsit_data.sources.raw import EmbeddedImage, RawItem, SourceSpec
from parsit_data.sources.sampling import count_records, estimate_total, iter_source, read_all, sampled_count

__all__ = ["MAX_NESTING", "EmbeddedImage", "RawItem", "SourceSpec", "count_records", "estimate_total", "expand_inputs",
           "iter_source", "read_all", "sampled_count"]
