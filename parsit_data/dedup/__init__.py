"""Near duplicates and benchmark contamination (issue 21).

- :mod:`~parsit_data.dedup.signatures`: per-row signatures, computed by the partitions as they build rows;
- :mod:`~parsit_data.dedup.index`: candidate pairs without all pairs (LSH banding, bit-sampling tables);
- :mod:`~parsit_data.dedup.global_pass`: the deterministic pass over every row, after the partitions;
- :mod:`~parsit_data.dedup.evalset`: ``--eval-set`` files as signatures;
- :mod:`~parsit_data.dedup.apply`: the pass inside a build, and its quarantines (how they fit the commit);
- :mod:`~parsit_data.dedup.section`: the report section (``DIR/dedup.json``).
"""

from __future__ import annotations

import json


def run_and_record(out, config, specs, results: dict, shard_meta, tokenizer) -> dict:
    """The global pass of a build: quarantines applied, ``DIR/dedup.json`` written. Returns the section."""
    from parsit_data.dedup import apply
    from parsit_data.dedup.section import DEDUP_NAME
    from parsit_data.format import atomic_write_bytes

    section = apply.run(out, config, specs, results, shard_meta, tokenizer)
    atomic_write_bytes(out / DEDUP_NAME, (json.dumps(section, indent=1, ensure_ascii=False) + "\n").encode())
    return section


def load_section(out) -> dict | None:
    """``DIR/dedup.json`` of a build, or None (a build without the pass)."""
    from parsit_data.dedup.section import DEDUP_NAME

    p = out / DEDUP_NAME
    if not p.is_file():
        return None
    return json.loads(p.read_bytes())
