"""The chunk overlap: partitions in, committed partitions out, the tokenizer kept busy.

Both engines (in-process and Ray) call :func:`process_partitions` (or :func:`process_partition`) with the
same partitions, so their outputs are byte-identical. The stages it runs are elsewhere: validation
(:func:`parsit_data.validate.check_item`), rendering (the template), tokenization
(:class:`parsit_data.encode.SegmentTokenizer`, in the background), the length policy and row assembly
(:mod:`parsit_data.rows`) and the commit (:mod:`parsit_data.commit`). What is here is the order they
run in, so that Python work overlaps the tokenizer's.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from parsit_data.commit import PartitionResult, commit_partition
from parsit_data.encode import PendingBatch, split_placeholders
from parsit_data.images import LoadedImage
from parsit_data.partition import Partition
from parsit_data.reasons import Reason
from parsit_data.records import Record, Reject, Rejection
from parsit_data.rows import PartitionRows, fit_length
from parsit_data.sources import RawItem
from parsit_data.templates import Segment
from parsit_data.validate import check_item, sample_id_of
from parsit_data.video import LoadedVideo
from parsit_data.video_build import with_time_instruction
from parsit_data.worker import WorkerContext

#: Records validated and rendered per tokenizer call. While the tokenizer encodes one chunk (in Rust,
#: without the GIL), Python validates the next one and assembles the previous one. The output does
#: not depend on it.
CHUNK_ROWS = 512
#: Chunks submitted to the tokenizer and not yet made rows. Two: while the oldest is assembled (and its
#: partition committed, the longest Python step) the tokenizer encodes the next one. The output does not
#: depend on it.
IN_FLIGHT = 2


@contextmanager
def gc_paused():
    """The cyclic garbage collector off while the pipeline runs; a young-generation collection after each
    partition's commit.

    A chunk allocates hundreds of thousands of container objects (parsed records, segments, id lists)
    and creates no reference cycles (tests/data/test_determinism.py checks). With the collector on, each
    burst is walked by young collections and walked again by middle ones while it is still alive (a
    tenth of a text-only build's time); paused per step, the survivors of every step were still walked
    once each step ended. Off for the run, a young collection runs after a commit only when the young
    generation has grown past :data:`YOUNG_LIMIT` objects (what a cycle would leave makes it grow), so
    nothing accumulates past that bound.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield was_enabled
    finally:
        if was_enabled:
            gc.enable()


def process_partition(part: Partition, ctx: WorkerContext) -> PartitionResult:
    """Validate, render, tokenize and commit one partition (what a Ray actor runs per task)."""
    return next(process_partitions([part], ctx))


def process_partitions(parts: Iterable[Partition], ctx: WorkerContext) -> Iterator[PartitionResult]:
    """:func:`process_partition` over a stream of partitions, results in order, tokenizer kept busy.

    The work runs in chunks of :data:`CHUNK_ROWS` records across partition boundaries: chunks k+1 and
    k+2 are validated (and the next partition read) while chunk k is encoded, so the tokenizer still has
    a chunk queued while a partition is committed. At most one partition's rows plus
    :data:`IN_FLIGHT` chunks are held.
    """
    with gc_paused() as collect:
        pending: deque[tuple[_PartitionWork, _Chunk, bool]] = deque()
        parts = iter(parts)
        while True:
            part = next(parts, None)
            if part is None:
                break
            items = part.records()  # a table or tar partition's records are read here
            work = _PartitionWork(part, ctx)
            starts = range(0, max(len(items), 1), CHUNK_ROWS)  # an empty partition still commits (no rows)
            for start in starts:
                chunk = work.prepare(start, items[start:start + CHUNK_ROWS])
                pending.append((work, chunk, start == starts[-1]))
                while len(pending) > IN_FLIGHT:
                    if (result := _emit(*pending.popleft())) is not None:
                        yield _collected(result, collect)
        while pending:
            if (result := _emit(*pending.popleft())) is not None:
                yield _collected(result, collect)


def _emit(work: "_PartitionWork", chunk: "_Chunk", last: bool) -> PartitionResult | None:
    """Rows of a tokenized chunk; after the partition's last chunk, its commit."""
    work.emit(chunk)
    return commit_partition(work.part, work.rows, work.ctx) if last else None


#: With the collector off, the young generation's count is what was allocated and not freed since the last
#: collection: the records and chunks in flight (tens of thousands of objects), plus whatever a reference
#: cycle would have left. Past this, a young collection runs after the next commit.
YOUNG_LIMIT = 250_000


def _collected(result: PartitionResult, collect: bool) -> PartitionResult:
    """After a commit, once the partition's rows are freed: a young collection when the young generation has
    grown past :data:`YOUNG_LIMIT` (walking 40k live objects costs 20-60 ms, so not after every partition)."""
    if collect and gc.get_count()[0] > YOUNG_LIMIT:
        gc.collect(0)
    return result


@dataclass
class _Chunk:
    good: list[tuple[int, Record, list[LoadedImage], RawItem]]  # (position in partition, ...)
    tokens: PendingBatch
    segments: list[list[Segment]]  # what was submitted, to find the culprit when the batch fails
    videos: dict[int, LoadedVideo]  # position in partition -> its sampled clip (records with a video)


class _PartitionWork:
    """One partition on its way to a shard: its chunks submitted to the tokenizer, then made rows."""

    def __init__(self, part: Partition, ctx: WorkerContext):
        self.part, self.ctx = part, ctx
        self.rows = PartitionRows(part.source, ctx.config.dedup_enabled, bool(ctx.config.eval_set))

    def prepare(self, start: int, items: list[RawItem]) -> _Chunk:
        """1. validate structure, load images, render; start tokenizing the chunk in the background."""
        ctx, cfg, rows = self.ctx, self.ctx.config, self.rows
        good: list[tuple[int, Record, list[LoadedImage], RawItem]] = []
        segs: list[list[Segment]] = []
        videos: dict[int, LoadedVideo] = {}
        rows.read(len(items))
        for k, item in enumerate(items, start):
            try:
                record, images, notes = check_item(item, ctx.vopts, ctx.iopts)
                if record.video is not None:  # decoded in the worker's decoder child, bounded
                    videos[k] = ctx.videos.load(record)
                    record = with_time_instruction(record, videos[k], ctx.videos.spec)
                rendered = ctx.template.render(record, cfg.system_prompt, cfg.label_policy)  # may Reject
            except Reject as r:
                sid = sample_id_of(item.value, item.source, item.position) if item.value is not None else None
                rows.reject(k, item, sid, r.rejection)
                continue
            rows.passed(notes)
            good.append((k, record, images, item))
            segs.append(rendered)
        return _Chunk(good, ctx.tokenizer.submit(segs, ctx.unmask), segs, videos)

    def _tokens(self, chunk: _Chunk) -> list:
        """The chunk's tokenized rows; a record whose text the tokenizer refuses is quarantined on its own.

        Parsing already quarantines what is known to break the tokenizer (lone surrogates); this is the
        net under it. The batch runs on the tokenizer's thread, so a failure there names no record: each
        record is then encoded alone, and only a record that fails *by itself* is quarantined
        (``tokenizer_error``). When every record encodes alone, the failure was not caused by content
        and the original exception propagates, as a bug does.
        """
        try:
            return chunk.tokens.result()
        except MemoryError:
            raise
        except Exception as batch_exc:  # noqa: BLE001 - narrowed below by re-encoding record by record
            tok, culprits = self.ctx.tokenizer, {}
            for n, segs in enumerate(chunk.segments):
                pieces = [p for text, special, _, _ in segs if not special for p in split_placeholders(text)
                          if type(p) is str]
                try:
                    tok._encode(pieces)
                except MemoryError:
                    raise
                except Exception as exc:  # noqa: BLE001 - this record's own text fails: data, not a bug
                    culprits[n] = f"{type(exc).__name__}: {str(exc)[:200]}"
            if not culprits:
                raise batch_exc
            out = []
            for n, ((k, record, _, item), segs) in enumerate(zip(chunk.good, chunk.segments)):
                if n in culprits:
                    rej = Rejection(Reason.TOKENIZER_ERROR, f"the tokenizer failed on this record: {culprits[n]}")
                    self.rows.reject(k, item, record.sample_id, rej)
                    out.append(None)
                else:
                    out.append(tok.tokenize_batch([segs], self.ctx.unmask)[0])
            return out

    def emit(self, chunk: _Chunk) -> None:
        """2. the length policy, rows."""
        cfg, rows, geometry = self.ctx.config, self.rows, self.ctx.geometry
        for (k, record, images, item), tok in zip(chunk.good, self._tokens(chunk)):
            if tok is None:  # quarantined by the tokenizer
                continue
            video = chunk.videos.get(k)
            row = fit_length(record, tok, images, geometry, cfg.max_length, cfg.overlong,
                             video, self.ctx.videos.spec)
            if type(row) is Rejection:
                rows.reject(k, item, record.sample_id, row)
            else:
                rows.add(row)
