"""The one way to read a source and the one sampling rule: :func:`iter_source` (what the build and
``validate`` read), :func:`count_records` (what it yields before sampling) and :func:`sampled_count`
(what a strategy keeps of N). The progress estimate uses the same three, so it cannot disagree with
the build about what an input holds.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator

from parsit_data.sources.raw import RawItem, SourceSpec

STRATEGY = re.compile(r"^(all|first:\d+%?|end:\d+%?|random:\d+%?)$")


def _readers() -> dict[str, tuple[Callable[[SourceSpec], Iterator[RawItem]], Callable[[SourceSpec], int] | None]]:
    """container -> (reader, cheap exact count or None when counting needs a full read)."""
    from parsit_data.sources import arrow, jsonl, jsonlist, wds

    return {
        "jsonl": (jsonl.read_jsonl, jsonl.count_jsonl),
        "json": (jsonlist.read_json_list, None),
        "parquet": (arrow.read_parquet, arrow.count_parquet),
        "arrow": (arrow.read_arrow, arrow.count_arrow),
        "webdataset": (wds.read_tars, lambda spec: sum(1 for _ in wds.read_tars(spec, keys=True))),
    }


def read_all(spec: SourceSpec) -> Iterator[RawItem]:
    """Every record of a source, before sampling, in order."""
    return _readers()[spec.format][0](spec)


def count_records(spec: SourceSpec, *, cheap_only: bool = False) -> int | None:
    """How many items :func:`read_all` yields; None with ``cheap_only`` when that needs a full parse."""
    counter = _readers()[spec.format][1]
    if cheap_only and (spec.format == "webdataset" or spec.format == "arrow" and _remote(spec)):
        return None  # counting reads every byte (tar members, remote Arrow batches)
    if counter is not None:
        return counter(spec)
    return None if cheap_only else sum(1 for _ in read_all(spec))


def sampled_count(strategy: str, total: int) -> int:
    """How many of ``total`` records a strategy keeps (LLaVA-NeXT rounds percentages down)."""
    if strategy == "all":
        return total
    _, _, amount = strategy.partition(":")
    n = int(amount.rstrip("%"))
    if amount.endswith("%"):
        n = int(total * n / 100)
    return min(n, total)


def estimate_total(specs: list[SourceSpec]) -> int | None:
    """Records a build will read, or None when a source would need a full parse to count."""
    total = 0
    for spec in specs:
        n = count_records(spec, cheap_only=True)
        if n is None:
            return None
        total += sampled_count(spec.sampling, n)
    return total


def _remote(spec: SourceSpec) -> bool:
    from parsit_data.format.fsio import RemotePath

    return any(isinstance(f, RemotePath) for f in spec.files)


def has_keys(spec: SourceSpec) -> bool:
    """Whether a source is read as keys first (ids and positions) and its records later, by whoever builds
    each partition: Parquet (by row group), Arrow files (by record batch) and WebDataset tars (by sample,
    from its byte offset), local or remote. JSON and JSONL records are read by the driver."""
    return spec.format in ("parquet", "arrow", "webdataset")


def read_keys(spec: SourceSpec) -> Iterator[RawItem]:
    """One key item per record of :func:`read_all` (same positions; ``value`` holds only the id; ``at`` says
    where the record is): from the id column alone (Parquet; Arrow, memory-mapped when local, each batch
    streamed past when remote), or from each sample's JSON member with its images read past (tars). The
    worker reads the records with :func:`load_records`."""
    from parsit_data.sources import arrow, wds

    if spec.format == "webdataset":
        return wds.read_tars(spec, keys=True)
    return arrow.read_parquet_keys(spec) if spec.format == "parquet" else arrow.read_arrow_keys(spec)


def load_records(spec: SourceSpec, keys: list[RawItem]) -> list[RawItem]:
    """The records of a partition's key items, read where it runs: what :func:`read_all` yields for them."""
    from parsit_data.sources import arrow, wds

    return wds.load_samples(spec, keys) if spec.format == "webdataset" else arrow.load_rows(spec, keys)


def iter_source(spec: SourceSpec, keys: bool = False) -> Iterator[RawItem]:
    """The records of one source after its sampling strategy, in input order (with ``keys``, for a source
    that :func:`has_keys`, their key items)."""
    read = read_keys if keys and has_keys(spec) else read_all
    strategy = spec.sampling
    if strategy == "all":
        yield from read(spec)
        return
    kind, _, _ = strategy.partition(":")
    if kind == "first" and not strategy.endswith("%"):
        n = sampled_count(strategy, 1 << 62)  # no count needed
    else:
        total = count_records(spec)
        n = sampled_count(strategy, total)
    if kind == "first":
        for i, item in enumerate(read(spec)):
            if i >= n:
                return
            yield item
    elif kind == "end":
        start = max(total - n, 0)
        for i, item in enumerate(read(spec)):
            if i >= start:
                yield item
    else:  # random: a seeded choice of records, kept in input order
        chosen = set(random.Random(spec.seed).sample(range(total), n))
        for i, item in enumerate(read(spec)):
            if i in chosen:
                yield item
