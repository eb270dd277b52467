"""The global pass inside a build: run it over the committed partitions, then act on it.

How it fits the commit protocol. The partitions are committed before the pass (shard, quarantine part,
signatures, part file), so a quarantine decided by the pass rewrites what is already committed, per
partition that loses rows, in the partition's own commit order:

1. the shard without the dropped rows (atomic write, same name);
2. the quarantine part with one line per dropped row appended (the record re-read from its source);
3. the part file: the new shard checksum, the counters moved from kept to the new reason, the report
   statistics of the remaining rows, and ``dedup_dropped`` (the dropped rows' positions).

The signature files are never rewritten: they hold every row the partition built, so the pass sees the
same rows on every run. A kill before step 3 leaves a shard whose checksum the part file does not know:
the next run rebuilds that partition (as for any torn commit) and the pass drops the same rows again. A
kill after step 3 leaves a finished partition whose ``dedup_dropped`` equals what the pass finds again,
and it is reused as is. Either way the result is the same bytes as an uninterrupted build.
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa

from parsit_data.dedup.evalset import load_eval_sets
from parsit_data.dedup.global_pass import Findings, Signatures, Thresholds, global_pass, load_signatures
from parsit_data.dedup.section import make_section, rows_wanted
from parsit_data.errors import ParsitError
from parsit_data.format import atomic_write_bytes, read_shard_table, part_path, quarantine_part_path, read_part, write_shard
from parsit_data.partition import iter_partitions
from parsit_data.quarantine import quarantine_line
from parsit_data.reasons import Reason
from parsit_data.records import Rejection
from parsit_data.stats import PartitionStats

log = logging.getLogger(__name__)


def drops_of(f: Findings, sig: Signatures, config) -> dict[int, Rejection]:
    """Row -> its quarantine, per the build's actions (contamination first: a leak is a leak)."""
    drops: dict[int, Rejection] = {}
    if config.contamination == "quarantine":
        for r, c in f.contaminated.items():
            drops[r] = Rejection(Reason.EVAL_CONTAMINATION,
                                 f"{c['via']} is a near copy of eval set {c['eval_set']!r} item {c['item']!r} "
                                 f"({'bits apart' if c['via'] == 'image' else 'jaccard'}: {c['score']})")
    if config.near_duplicates == "quarantine":
        for r, k in f.dup_of.items():
            if r not in drops:
                drops[r] = Rejection(Reason.NEAR_DUPLICATE,
                                     f"near copy of sample {sig.sample_id[k]!r} (source {sig.source[k]!r}), kept")
    return drops


def run(out, config, specs, results: dict, shard_meta, tokenizer) -> dict:
    """The pass over the committed partitions ``results`` (index -> PartitionResult), its quarantines
    applied (``results`` updated in place). Returns the report section."""
    indices = sorted(results)
    parts = [(i, read_part(out, i)["source"]) for i in indices]
    sig = load_signatures(out, parts)
    ev = load_eval_sets(config.eval_set, config.eval_image_root, config.seed) if config.eval_set else None
    th = Thresholds.of(config)
    f = global_pass(sig, ev, th, config.contamination == "quarantine", config.near_duplicates != "off")
    log.info("global pass: %d rows, %d near copies, %d contaminated", sig.n, len(f.dup_of), len(f.contaminated))
    drops = drops_of(f, sig, config)
    by_part: dict[int, dict[int, Rejection]] = {}
    for r, rej in drops.items():
        by_part.setdefault(int(sig.part[r]), {})[r] = rej
    todo = {}
    for p, rows in sorted(by_part.items()):
        meta = read_part(out, p)
        positions = sorted(int(sig.position[r]) for r in rows)
        if "dedup_dropped" in meta:  # applied by an earlier run of this build (resume)
            if meta["dedup_dropped"] != positions:
                raise ParsitError(f"{part_path(out, p)} dropped other rows than this build's global pass finds: "
                                  "rebuild with --overwrite")
            continue
        todo[p] = (meta, rows)
    wanted = rows_wanted(sig, f) | {r for _, rows in todo.values() for r in rows}
    items = _items_of(specs, config.shard_rows, wanted, sig)
    section = make_section(config, sig, f, ev, items)
    for p, (meta, rows) in todo.items():
        results[p] = _apply(out, p, meta, {int(sig.row[r]): rej for r, rej in rows.items()},
                            {int(sig.row[r]): items[r] for r in rows}, results[p], shard_meta, tokenizer)
    return section


def _items_of(specs, shard_rows: int, wanted: set[int], sig: Signatures) -> dict[int, object]:
    """The raw items of rows ``wanted`` (row -> RawItem), read again from the sources (one pass, stopping
    after the last partition needed)."""
    if not wanted:
        return {}
    want: dict[int, dict[int, int]] = {}
    for r in wanted:
        want.setdefault(int(sig.part[r]), {})[int(sig.position[r])] = r
    found: dict[int, object] = {}
    last = max(want)
    for part in iter_partitions(specs, shard_rows):
        w = want.get(part.index)
        if w:
            for item in part.items:
                r = w.get(item.position)
                if r is not None:
                    found[r] = item
        if part.index >= last:
            break
    return found


def _apply(out, p: int, meta: dict, rows: dict, items: dict, result, shard_meta, tokenizer):
    from parsit_data.commit import PartitionResult

    rel = meta["shard"]["path"]
    table = read_shard_table(out / rel)
    keep = [i not in rows for i in range(table.num_rows)]
    dropped = table.filter(pa.array([not k for k in keep])).to_pydict()
    kept = table.filter(pa.array(keep))
    nbytes, digest = write_shard(out / rel, kept, shard_meta)

    qpath = quarantine_part_path(out, p)
    lines = [quarantine_line(items[r], sid, rows[r]) for r, sid in zip(sorted(rows), dropped["sample_id"])]
    old = qpath.read_bytes().decode()
    atomic_write_bytes(qpath, (old + "".join(q + "\n" for q in lines)).encode())

    source = meta["source"]
    stats = PartitionStats.from_json(meta["stats"])
    s = stats.source(source)
    for k in range(len(dropped["sample_id"])):
        s.kept -= 1
        s.tokens -= dropped["length"][k]
        s.text_tokens -= len(dropped["input_ids"][k])
        s.supervised_tokens -= dropped["supervised_tokens"][k]
        s.images -= len(dropped["images"][k])
        s.truncated -= bool(dropped["truncated"][k])
    for rej in rows.values():
        s.quarantined[rej.reason] += 1
    fresh = PartitionStats()
    all_lines = [x for x in (old + "".join(q + "\n" for q in lines)).splitlines() if x]
    fresh.observe_partition(p, source, kept.to_pydict(), all_lines, tokenizer)
    stats.dists[source] = fresh.dist(source)

    shard = {"path": rel, "rows": kept.num_rows, "bytes": nbytes, "sha256": digest}
    meta = dict(meta, shard=shard, quarantined=meta["quarantined"] + len(lines), stats=stats.to_json(),
                dedup_dropped=sorted(items[r].position for r in rows))
    atomic_write_bytes(part_path(out, p), json.dumps(meta, sort_keys=True).encode())
    return PartitionResult(p, shard, stats, meta["quarantined"], result.reused)
