"""Helpers for the validation tests: real images (including hostile ones) and fast real builds."""

from __future__ import annotations

import contextlib
import functools
import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from parsit_data import tokenizer, worker
from parsit_data.build import build
from parsit_data.config import BuildConfig
from parsit_data.format import QUARANTINE_NAME

_real_load_tokenizer = tokenizer.load_tokenizer


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(path: str):
    return _real_load_tokenizer(path)


@contextlib.contextmanager
def fast_builds():
    """Load the (real) tokenizer once per process instead of twice per build: builds drop from ~4 s to <1 s."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tokenizer, "load_tokenizer", lambda p: _cached_tokenizer(str(p)))
        mp.setattr(worker, "load_tokenizer", lambda p: _cached_tokenizer(str(p)))
        yield


def save_image(path: Path, size=(64, 48), fmt=None, color=(200, 30, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that *declares* width x height (valid signature, IHDR with CRC, a tiny IDAT, IEND).

    Pillow reads the size from IHDR without decoding, so a decompression bomb needs no huge file.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def truncated_png(path: Path, size=(128, 128)) -> Path:
    import io
    import random

    rnd = random.Random(0)
    img = Image.frombytes("RGB", size, bytes(rnd.randrange(256) for _ in range(size[0] * size[1] * 3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def conv(user="What is this?", reply="A page.", image=None, **extra) -> dict:
    rec = {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": reply}], **extra}
    if image is not None:
        rec["image"] = image
    return rec


def write_jsonl(path: Path, records) -> Path:
    """Records are dicts (dumped) or bytes (written as the raw line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for r in records:
            f.write((r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode()) + b"\n")
    return path


def run_build(inputs, out: Path, **kw) -> dict:
    """The build's manifest as the JSON it wrote."""
    with fast_builds():
        return build(BuildConfig(inputs=[str(p) for p in inputs], out=str(out), overwrite=True, **kw)).model_dump(
            mode="json")


def quarantine_lines(out: Path) -> list[dict]:
    text = (out / QUARANTINE_NAME).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def check_accounting(manifest: dict, out: Path, expected_read: dict[str, int] | None = None) -> None:
    """read = kept + quarantined per source, in the manifest, in quarantine.jsonl and in the shards."""
    from parsit_data.format import read_shard

    q_by_source: Counter = Counter()
    reasons_by_source: dict[str, Counter] = {}
    for q in quarantine_lines(out):
        q_by_source[q["source"]] += 1
        reasons_by_source.setdefault(q["source"], Counter())[q["reason"]] += 1
    rows_by_source: Counter = Counter()
    for s in manifest["shards"]:
        for src in read_shard(out / s["path"]).column("source").to_pylist():
            rows_by_source[src] += 1
    for s in manifest["sources"]:
        q = sum(s["quarantined"].values())
        assert s["read"] == s["kept"] + q, s
        assert q_by_source[s["name"]] == q, (s["name"], q_by_source)
        assert dict(reasons_by_source.get(s["name"], {})) == s["quarantined"]
        assert rows_by_source[s["name"]] == s["kept"]
        if expected_read is not None:
            assert s["read"] == expected_read[s["name"]], (s["name"], s["read"], expected_read)
    t = manifest["totals"]
    assert t["read"] == t["kept"] + t["quarantined"]
    assert t["quarantined"] == len(quarantine_lines(out))
