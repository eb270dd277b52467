"""WebDataset tar shards: members grouped by key (``dir/key.ext``: the name up to the first dot of the
base name), one sample per key, streamed (a tar is read front to back, never extracted).

A sample is its ``.json`` member (the record, in any spelling) plus its image members
(``jpg jpeg png webp bmp gif tif tiff``, in member order). When the record names no images, its images
are the sample's image members in order; when it names some, each name is matched to a member of the
sample (full member name, name without the key, or extension: ``key.jpg``, ``jpg``); a name that matches
no member stays a path under ``--image-root``. Image bytes become :class:`EmbeddedImage`s named
``shard.tar:key.jpg``.

Bad input, per sample: no ``.json`` member (``missing_conversations``), JSON that a JSONL line with the
same bytes would be quarantined for (``invalid_json``, ``non_utf8``, ``non_standard_number``,
``invalid_unicode``), two ``.json`` members (``bad_field``). A truncated member or a corrupt
header ends what can be read of the shard: the sample it falls in is quarantined (``unreadable_input``,
naming the member) and the next shard is read.

Partitions: the driver reads the shards as keys (``read_tars(spec, keys=True)``: each sample's id and the
byte offset of its first header; image members are read past, never held), and the worker of a partition
reads its samples from that offset (:func:`load_samples`): the items a front-to-back read gives.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from parsit_data.format.fsio import RemotePath, open_input
from parsit_data.reasons import Reason
from parsit_data.records import Rejection
from parsit_data.sources.jsonl import parse_document
from parsit_data.sources.raw import EmbeddedImage, RawItem, SourceSpec

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})
_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError)


def split_key(name: str) -> tuple[str, str]:
    """``("dir/key", "ext")`` of a member name, WebDataset's rule (the first dot of the base name)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


def _sample(spec: SourceSpec, index: int, tar: str, key: str, members: list[tuple[str, bytes]]) -> RawItem:
    member = f"{tar}:{key}"
    jsons = [(n, d) for n, d in members if split_key(n)[1] == "json"]
    images = [(n, d) for n, d in members if split_key(n)[1] in IMAGE_EXTENSIONS]
    listing = [n for n, _ in members]

    def rejected(reason: Reason, detail: str, raw: str | None = None) -> RawItem:
        return RawItem(spec.name, index, "index", raw=raw if raw is not None else json.dumps({"members": listing}),
                       rejection=Rejection(reason, detail), member=member)

    if not jsons:
        return rejected(Reason.MISSING_CONVERSATIONS, f"sample {key!r} of {tar} has no .json member "
                                                      f"(members: {', '.join(listing)[:200]})")
    if len(jsons) > 1:
        return rejected(Reason.BAD_FIELD, f"sample {key!r} of {tar} has {len(jsons)} .json members")
    value, rejection, raw = parse_document(jsons[0][1], jsons[0][0])
    if rejection is not None:
        if value is not None:  # parsed, but not text (a lone surrogate): shown parsed, as a JSONL line is
            return RawItem(spec.name, index, "index", value=value, rejection=rejection, member=member)
        return rejected(rejection.reason, rejection.detail, raw)
    if isinstance(value, dict):
        value = _attach_images(value, key, images, tar)
    return RawItem(spec.name, index, "index", value=value, member=member)


def _attach_images(value: dict, key: str, images: list[tuple[str, bytes]], tar: str) -> dict:
    def embedded(name: str, data: bytes) -> EmbeddedImage:
        return EmbeddedImage(f"{tar}:{name}", data, name)

    field = "images" if "images" in value else "image" if "image" in value else None
    if field is None:
        if images:
            return {**value, "images": [embedded(n, d) for n, d in images]}
        return value
    by_name: dict[str, tuple[str, bytes]] = {}
    for n, d in images:
        rest = n.rpartition("/")[2].partition(".")[2]
        for alias in (n, n.rpartition("/")[2], rest, split_key(n)[1]):
            by_name.setdefault(alias, (n, d))

    def match(ref):
        if isinstance(ref, str) and ref in by_name:
            return embedded(*by_name[ref])
        return ref

    refs = value[field]
    return {**value, field: [match(r) for r in refs] if isinstance(refs, list) else match(refs)}


def _drain(f) -> bytes:
    """Read a member to its end without keeping it (a truncated member fails here as a full read would)."""
    while f.read(1 << 20):
        pass
    return b""


def _tar_items(spec: SourceSpec, fi: int, index: int, offset: int = 0, keys: bool = False
               ) -> Iterator[tuple[RawItem, int | None]]:
    """The items of tar file ``fi`` from the sample whose first header is at byte ``offset``, the first one
    at position ``index``; each with the byte offset its sample starts at (None where a
    global pax header before it means the file must be read from its start). With ``keys``, image
    members are read and dropped (their bytes are never held)."""
    f = spec.files[fi]
    tar = f.name if isinstance(f, (Path, RemotePath)) else Path(str(f)).name
    key, members, current, start = None, [], None, None
    try:
        with open_input(f, offset=offset) as raw, tarfile.open(fileobj=raw, mode="r|") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                current = m.name
                k, ext = split_key(m.name)
                if k != key:
                    if key is not None:
                        yield _sample(spec, index, tar, key, members), start
                        index, members = index + 1, []
                    start = None if tf.pax_headers else offset + m.offset
                key = k
                data = tf.extractfile(m)
                members.append((m.name, _drain(data) if keys and ext != "json" else data.read()))
                current = None
        if key is not None:
            yield _sample(spec, index, tar, key, members), start
    except _ERRORS as exc:
        where = f"member {current!r}" if current else "a member header"
        yield RawItem(spec.name, index, "index", raw=json.dumps({"members": [n for n, _ in members]}),
                      member=f"{tar}:{key}" if key is not None else tar,
                      rejection=Rejection(Reason.UNREADABLE_INPUT,
                                          f"{tar}: {where} cannot be read ({str(exc)[:200]}); the rest of "
                                          "this shard is not read")), start if key is not None else offset


def read_tars(spec: SourceSpec, keys: bool = False) -> Iterator[RawItem]:
    """Every sample of the shards, in order. With ``keys``: key items (``value`` holds only the id, ``at =
    (file, sample, byte offset)``); the images are read past, not kept, and a partition's worker reads its
    samples with :func:`load_samples`."""
    index = 0
    for fi in range(len(spec.files)):
        for ordinal, (item, start) in enumerate(_tar_items(spec, fi, index, keys=keys)):
            if keys:
                v = item.value
                item = replace(item, value={"id": v["id"]} if isinstance(v, dict) and "id" in v else {},
                               at=(fi, ordinal, start))
            yield item
            index += 1


def load_samples(spec: SourceSpec, keys: list[RawItem]) -> list[RawItem]:
    """The records of key items (from ``read_tars(spec, keys=True)``), in their order: the same items the
    streaming reader yields. Each tar is read from the first wanted sample's header (a seek, locally or on
    an object store) to the last wanted one. A rejection a key carries (``duplicate_id``) stays."""
    from parsit_data.sources.arrow import _in_order

    got: dict[tuple, RawItem] = {}
    by_file: dict[int, dict[int, RawItem]] = {}
    for k in keys:
        by_file.setdefault(k.at[0], {})[k.at[1]] = k
    for fi, wanted in sorted(by_file.items()):
        first = wanted[min(wanted)]
        base = first.position - first.at[1]  # positions run on, one per sample, within a file
        ordinal, offset = (first.at[1], first.at[2]) if first.at[2] is not None else (0, 0)
        last = max(wanted)
        for n, (item, _) in enumerate(_tar_items(spec, fi, base + ordinal, offset)):
            k = wanted.get(ordinal + n)
            if k is not None:
                got[k.at] = item
            if ordinal + n >= last:
                break
    return _in_order(keys, got)
