"""Partitioning: the sources streamed into partitions of ``shard_rows`` records, duplicate ids marked.

The first stage of both ``parsit-data build`` and ``parsit-data validate`` (:mod:`parsit_data.precheck`),
so the two cannot disagree on which record is a duplicate. Marking duplicates needs the whole build, so
it runs here, in the driver, before the partitions go to an engine: a record whose id appeared earlier
in the build (in any source) carries a ``duplicate_id`` rejection. A partition holds records of one
source only; its ``index`` is its position in the build (and its shard's number).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from parsit_data.records import Rejection
from parsit_data.sources import RawItem, SourceSpec, iter_source
from parsit_data.validate import sample_id_of


@dataclass
class Partition:
    index: int
    source: str
    items: list[RawItem]


def iter_partitions(specs: list[SourceSpec], shard_rows: int) -> Iterator[Partition]:
    """Stream the sources into partitions (one source per partition), marking duplicate ids."""
    seen: set[str] = set()
    index = 0
    for spec in specs:
        items: list[RawItem] = []
        for item in iter_source(spec):
            if item.rejection is None:
                sid = sample_id_of(item.value, item.source, item.position)
                if sid in seen:
                    item = RawItem(item.source, item.position, item.kind, value=item.value,
                                   rejection=Rejection("duplicate_id", f"id {sid!r} already appeared earlier in this build"))
                else:
                    seen.add(sid)
            items.append(item)
            if len(items) >= shard_rows:
                yield Partition(index, spec.name, items)
                index, items = index + 1, []
        if items:
            yield Partition(index, spec.name, items)
            index += 1
