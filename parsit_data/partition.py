"""Partitioning: the sources streamed into partitions of ``shard_rows`` records, duplicate ids marked.

The first stage of both ``parsit-data build`` and ``parsit-data validate`` (:mod:`parsit_data.precheck`),
so the two cannot disagree on which record is a duplicate. Marking duplicates needs the whole build, so
it runs here, in the driver, before the partitions go to an engine: a record whose id appeared earlier
in the build (in any source) carries a ``duplicate_id`` rejection. A partition holds records of one
source only; its ``index`` is its position in the build (and its shard's number).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from parsit_data.records import Rejection
from parsit_data.sources import RawItem, SourceSpec, iter_source
from parsit_data.sources.sampling import has_keys
from parsit_data.validate import sample_id_of


@dataclass
class Partition:
    index: int
    source: str
    #: The records; for a table source (``spec`` set), their key items: the worker reads the rows.
    items: list[RawItem]
    spec: SourceSpec | None = None

    def records(self) -> list[RawItem]:
        """The partition's records, read where this runs (a Ray worker reads its own row groups)."""
        if self.spec is None:
            return self.items
        from parsit_data.sources.sampling import load_records

        return load_records(self.spec, self.items)


def iter_partitions(specs: list[SourceSpec], shard_rows: int) -> Iterator[Partition]:
    """Stream the sources into partitions (one source per partition), marking duplicate ids.

    A Parquet, Arrow or WebDataset source is read here as keys (ids and where each record is: no image
    bytes pass through the driver or travel in a partition); each partition's records are read by whoever
    processes it (:meth:`Partition.records`), so one big file or a folder of tar shards spreads over the
    workers. The partitions are the same whatever the engine or the number of workers.
    """
    seen: set[str] = set()
    index = 0
    for spec in specs:
        lazy = spec if has_keys(spec) else None
        items: list[RawItem] = []
        for item in iter_source(spec, keys=True):
            if item.rejection is None:
                sid = sample_id_of(item.value, item.source, item.position)
                if sid in seen:
                    item = replace(item, rejection=Rejection("duplicate_id",
                                                             f"id {sid!r} already appeared earlier in this build"))
                else:
                    seen.add(sid)
            items.append(item)
            if len(items) >= shard_rows:
                yield Partition(index, spec.name, items, lazy)
                index, items = index + 1, []
        if items:
            yield Partition(index, spec.name, items, lazy)
            index += 1
