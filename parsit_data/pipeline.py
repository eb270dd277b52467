"""The per-partition function that every engine calls: raw items in, shard + quarantine + stats out.

Both engines (in-process and Ray) call :func:`process_partition` with the same partitions, so their
outputs are byte-identical. A partition's results are committed in order: shard, quarantine part, then
the part file (its commit marker, holding the shard's checksum and the statistics).
"""

from __future__ import annotations

import base64
import gc
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import accumulate, chain
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from parsit_data.config import BuildConfig
from parsit_data.format import (IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX, SHARD_SCHEMA, SHARDS_DIR, ShardMeta,
                                atomic_write_bytes, fingerprint, part_path, quarantine_part_path, read_part,
                                read_shard_meta, sha256_file, shard_name, write_shard)
from parsit_data.errors import ParsitError
from parsit_data.images import LoadedImage
from parsit_data.reasons import Reason
from parsit_data.records import Record, Reject, Rejection
from parsit_data.sources import RawItem
from parsit_data.stats import PartitionStats
from parsit_data.templates import Segment, get_template
from parsit_data.encode import PendingBatch, SegmentTokenizer, Tokenized
from parsit_data.tokenizer import load_tokenizer
from parsit_data.validate import ValidationOptions, check_item, sample_id_of


@dataclass
class Partition:
    index: int
    source: str
    items: list[RawItem]


@dataclass
class PartitionResult:
    index: int
    shard: dict  # {"path", "rows", "bytes", "sha256"}
    stats: PartitionStats
    quarantined: int
    reused: bool = False


@dataclass
class WorkerContext:
    """What a worker loads once and reuses for every partition (the tokenizer above all)."""

    config: BuildConfig
    config_hash: str
    control_tokens: frozenset[str]
    tokenizer: SegmentTokenizer = field(init=False)

    def __post_init__(self):
        self.tokenizer = SegmentTokenizer(load_tokenizer(self.config.tokenizer))
        self.template = get_template(self.config.template, self.config.tokenizer)
        self.unmask = self.template.unmask_tokens(self.config.label_policy)
        self.vopts = ValidationOptions(self.control_tokens, self.config.fix_missing_placeholder)
        self.iopts = self.config.image_options
        self.geometry = self.config.geometry
        #: What every shard of the build says about the build (its schema metadata).
        self.shard_meta = ShardMeta(self.config_hash, fingerprint(self.config.tokenizer), self.config.template)


def reuse_finished(out: Path, index: int, meta: ShardMeta) -> PartitionResult | None:
    """A partition finished by an earlier run of the same build, whose shard still verifies."""
    try:
        part = read_part(out, index)
        if part is None or part.get("config_hash") != meta.config_hash:
            return None
        shard = out / part["shard"]["path"]
        if not shard.is_file() or sha256_file(shard) != part["shard"]["sha256"] or read_shard_meta(shard) != meta:
            return None  # a shard of another format version is rebuilt, not reused
    except (ParsitError, OSError, pa.ArrowInvalid):
        return None
    if not quarantine_part_path(out, index).is_file():
        return None
    return PartitionResult(index, part["shard"], PartitionStats.from_json(part["stats"]), part["quarantined"], True)


def _quarantine_line(item: RawItem, sample_id: str | None, rej: Rejection) -> str:
    """One line of ``quarantine.jsonl``: valid UTF-8 JSON on one line, whatever the record held.

    The record is kept losslessly: a line that is not UTF-8 also comes as its exact bytes
    (``record_b64``); a lone surrogate (only in ``invalid_unicode`` records) is written as its JSON
    escape, which ``json.loads`` reads back to the same string.
    """
    # The fields of QuarantineRecord, in its order, as a plain dict: pydantic's serializer (Rust) cannot
    # carry a lone surrogate, which an invalid_unicode record holds by definition.
    q = {
        "source": item.source,
        "line": item.position if item.kind == "line" else None,
        "index": item.position if item.kind == "index" else None,
        "sample_id": sample_id,
        "reason": rej.reason.value,
        "detail": rej.detail,
        "record": item.value if item.value is not None else item.raw,
    }
    if item.raw_bytes is not None:
        q["record_b64"] = base64.b64encode(item.raw_bytes).decode("ascii")
    line = json.dumps(q, ensure_ascii=False)
    # Characters that str.splitlines() (and other readers) treat as line breaks stay escaped, so that
    # one rejected record is always exactly one line. They can only occur inside JSON strings here.
    line = line.translate(_LINE_BREAKS_ESCAPED)
    if not line.isascii() and _SURROGATE.search(line):
        line = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
    return line


_LINE_BREAKS_ESCAPED = {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}  # json escapes < 0x20 itself
_SURROGATE = re.compile("[\ud800-\udfff]")


def _truncate(tok: Tokenized, record: Record, image_tokens: list[int], max_length: int) -> tuple[Tokenized, int] | None:
    """Cut after the last assistant turn that fits, never inside an image. None when nothing fits."""
    # Multimodal length after each turn boundary; images sit inside user turns, so a boundary never
    # splits an image's tokens.
    best = None
    img_i = 0
    extra = 0  # visual tokens - placeholders so far
    for t, turn in enumerate(record.turns):
        end = tok.turn_ends.get(t)
        if end is None:
            continue
        while img_i < len(image_tokens) and tok.input_ids[:end].count(IMAGE_TOKEN_INDEX) > img_i:
            extra += image_tokens[img_i] - 1
            img_i += 1
        if turn.role == "assistant" and end + extra <= max_length:
            best = (end, img_i)
    if best is None:
        return None
    end, n_img = best
    labels = tok.labels[:end]
    return Tokenized(tok.input_ids[:end], labels, {}, sum(1 for x in labels if x != IGNORE_INDEX)), n_img


#: Records validated and rendered per tokenizer call. While the tokenizer encodes one chunk (in Rust,
#: without the GIL), Python validates the next one and assembles the previous one. The output does
#: not depend on it.
CHUNK_ROWS = 512


def int32_lists(lists: list[list[int]]) -> pa.ListArray:
    """A ``list<int32>`` column from Python lists: one flat numpy pass, ~6x faster than ``pa.array``."""
    offsets = list(accumulate(map(len, lists), initial=0))
    values = np.fromiter(chain.from_iterable(lists), dtype=np.int32, count=offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


@contextmanager
def gc_paused():
    """Pause the cyclic garbage collector for one step of the pipeline (a chunk, a partition's commit).

    A chunk allocates hundreds of thousands of container objects (parsed records, segments, id lists)
    and creates no reference cycles (tests/data/test_determinism.py checks); with the collector on,
    each burst triggers full collections that walk the whole heap again and again (about a fifth of a
    text-only build's time). Between steps it runs as usual, so nothing accumulates.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def process_partition(part: Partition, ctx: WorkerContext, out: Path) -> PartitionResult:
    """Validate, render, tokenize and commit one partition (what a Ray actor runs per task)."""
    return next(process_partitions([part], ctx, out))


def process_partitions(parts: Iterable[Partition], ctx: WorkerContext, out: Path) -> Iterator[PartitionResult]:
    """:func:`process_partition` over a stream of partitions, results in order, tokenizer kept busy.

    The work runs in chunks of :data:`CHUNK_ROWS` records across partition boundaries: chunk k+1 is
    validated (and the next partition read) while chunk k is encoded; a partition is committed while
    the first chunk of the next one is encoded. At most one partition's rows plus one chunk are held.
    """
    pending: tuple[_PartitionWork, _Chunk, bool] | None = None
    parts = iter(parts)
    while True:
        with gc_paused():
            part = next(parts, None)  # reading a partition parses its records: a step too
        if part is None:
            break
        work = _PartitionWork(part, ctx)
        starts = range(0, max(len(part.items), 1), CHUNK_ROWS)  # an empty partition still commits (no rows)
        for start in starts:
            with gc_paused():
                chunk = work.prepare(start, part.items[start:start + CHUNK_ROWS])
            if pending is not None and (result := _emit(*pending, out)) is not None:
                yield result
            pending = (work, chunk, start == starts[-1])
    if pending is not None and (result := _emit(*pending, out)) is not None:
        yield result


def _emit(work: "_PartitionWork", chunk: "_Chunk", last: bool, out: Path) -> PartitionResult | None:
    """Rows of a tokenized chunk; after the partition's last chunk, its commit."""
    with gc_paused():
        work.emit(chunk)
        return work.commit(out) if last else None


@dataclass
class _Chunk:
    good: list[tuple[int, Record, list[LoadedImage], RawItem]]  # (position in partition, ...)
    tokens: PendingBatch
    segments: list[list[Segment]]  # what was submitted, to find the culprit when the batch fails


class _PartitionWork:
    """One partition on its way to a shard: rows and quarantine lines gathered chunk by chunk."""

    def __init__(self, part: Partition, ctx: WorkerContext):
        self.part, self.ctx = part, ctx
        self.stats = PartitionStats()
        self.sstats = self.stats.source(part.source)
        self.qlines: list[tuple[int, str]] = []  # (position in the partition, line): sorted at commit
        self.cols: dict[str, list] = {f: [] for f in (
            "sample_id", "source", "input_ids", "labels", "length", "num_image_tokens", "images",
            "image_sizes", "image_paths", "num_turns", "supervised_tokens", "truncated")}

    def prepare(self, start: int, items: list[RawItem]) -> _Chunk:
        """1. validate structure, load images, render; start tokenizing the chunk in the background."""
        ctx, cfg, sstats = self.ctx, self.ctx.config, self.sstats
        good: list[tuple[int, Record, list[LoadedImage], RawItem]] = []
        segs: list[list[Segment]] = []
        for k, item in enumerate(items, start):
            sstats.read += 1
            sid = sample_id_of(item.value, item.source, item.position) if item.value is not None else None
            try:
                record, images, notes = check_item(item, ctx.vopts, ctx.iopts)
                rendered = ctx.template.render(record, cfg.system_prompt, cfg.label_policy)  # may Reject
            except Reject as r:
                self.qlines.append((k, _quarantine_line(item, sid, r.rejection)))
                sstats.quarantined[r.rejection.reason] += 1
                continue
            if "placeholder_inserted" in notes:
                sstats.placeholder_inserted += 1
            good.append((k, record, images, item))
            segs.append(rendered)
        return _Chunk(good, ctx.tokenizer.submit(segs, ctx.unmask), segs)

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
                pieces = [p for text, special, _, _ in segs if not special for p in text.split(IMAGE_PLACEHOLDER) if p]
                try:
                    tok._encode(pieces)
                except MemoryError:
                    raise
                except Exception as exc:  # noqa: BLE001 - this record's own text fails: data, not a bug
                    culprits[n] = f"{type(exc).__name__}: {str(exc)[:200]}"
            if not culprits:
                raise batch_exc
            rows = []
            for n, ((k, record, _, item), segs) in enumerate(zip(chunk.good, chunk.segments)):
                if n in culprits:
                    rej = Rejection(Reason.TOKENIZER_ERROR, f"the tokenizer failed on this record: {culprits[n]}")
                    self.qlines.append((k, _quarantine_line(item, record.sample_id, rej)))
                    self.sstats.quarantined[rej.reason] += 1
                    rows.append(None)
                else:
                    rows.append(tok.tokenize_batch([segs], self.ctx.unmask)[0])
            return rows

    def emit(self, chunk: _Chunk) -> None:
        """2. lengths, the over-length policy, rows."""
        ctx, cfg, sstats, cols = self.ctx, self.ctx.config, self.sstats, self.cols
        for (k, record, images, item), tok in zip(chunk.good, self._tokens(chunk)):
            if tok is None:  # quarantined by the tokenizer
                continue
            image_tokens = [ctx.geometry.tokens_for(im.width, im.height) for im in images]
            length = len(tok.input_ids) - len(images) + sum(image_tokens)
            truncated = False
            if cfg.max_length is not None and length > cfg.max_length:
                cut = _truncate(tok, record, image_tokens, cfg.max_length) if cfg.overlong == "truncate" else None
                if cut is None:
                    rej = Rejection(Reason.OVERLONG, f"multimodal length {length} exceeds --max-length {cfg.max_length}")
                    self.qlines.append((k, _quarantine_line(item, record.sample_id, rej)))
                    sstats.quarantined[rej.reason] += 1
                    continue
                tok, n_img = cut
                images, image_tokens = images[:n_img], image_tokens[:n_img]
                length = len(tok.input_ids) - n_img + sum(image_tokens)
                truncated = True
                sstats.truncated += 1
            supervised = tok.supervised
            cols["sample_id"].append(record.sample_id)
            cols["source"].append(record.source)
            cols["input_ids"].append(tok.input_ids)
            cols["labels"].append(tok.labels)
            cols["length"].append(length)
            cols["num_image_tokens"].append(image_tokens)
            cols["images"].append([im.data for im in images])
            cols["image_sizes"].append([{"width": im.width, "height": im.height} for im in images])
            cols["image_paths"].append([im.rel_path for im in images])
            cols["num_turns"].append(len(record.turns))
            cols["supervised_tokens"].append(supervised)
            cols["truncated"].append(truncated)
            sstats.kept += 1
            sstats.tokens += length
            sstats.text_tokens += len(tok.input_ids)
            sstats.supervised_tokens += supervised
            sstats.images += len(images)

    def commit(self, out: Path) -> PartitionResult:
        """3. statistics, then shard, quarantine part and the part file (the partition's commit marker)."""
        part, ctx, cols, stats = self.part, self.ctx, self.cols, self.stats
        qlines = [line for _, line in sorted(self.qlines, key=lambda kl: kl[0])]  # input order
        stats.observe_partition(part.index, part.source, cols, qlines, ctx.tokenizer.tok)  # for the report
        for name in ("input_ids", "labels"):
            cols[name] = int32_lists(cols[name])
        table = pa.Table.from_pydict(cols, schema=SHARD_SCHEMA)
        rel = f"{SHARDS_DIR}/{shard_name(part.index)}"
        nbytes, digest = write_shard(out / rel, table, ctx.shard_meta)
        atomic_write_bytes(quarantine_part_path(out, part.index), "".join(q + "\n" for q in qlines).encode())
        shard = {"path": rel, "rows": table.num_rows, "bytes": nbytes, "sha256": digest}
        meta = {"config_hash": ctx.config_hash, "index": part.index, "source": part.source, "shard": shard,
                "quarantined": len(qlines), "stats": stats.to_json()}
        atomic_write_bytes(part_path(out, part.index), json.dumps(meta, sort_keys=True).encode())
        return PartitionResult(part.index, shard, stats, len(qlines))
