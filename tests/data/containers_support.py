"""The same records written in every spelling and container Parsit reads (not a test module).

:func:`write_all` writes one set of records as: LLaVA JSONL + image files, chat-messages JSONL + image
files, a OneVision-style Parquet (``image`` as a ``{bytes, path}`` struct, LLaVA ``conversations``),
an HF-messages Parquet written by ``datasets`` (``messages`` with content parts, an ``images``
``List(Image())`` column), a ``datasets.save_to_disk`` folder (two Arrow files), and WebDataset tars
(``key.png`` + ``key.json``, two shards). Images are real PNGs (Pillow), each of its own size and colour.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

N_RECORDS = 14


def png(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40 + 7 * i, 30 + 3 * i), (10 * i % 256, 200 - 5 * i, 90)).save(out, format="PNG")
    return out.getvalue()


def records() -> list[dict]:
    """Canonical records: (id, turns as (role, [parts]), image indices). Parts are ("text", s) or ("image",)."""
    recs = []
    for i in range(N_RECORDS):
        kind = i % 4
        if kind == 0:
            user = [("image",), ("text", f"What is on page {i}?")]
        elif kind == 1:
            user = [("text", f"Question {i}: how much is {i} + {i}?")]
        elif kind == 2:
            user = [("text", "Look at this:"), ("image",), ("text", "What colour is it?")]
        else:
            user = [("image",), ("text", "Read the title.")]
        turns = [("user", user), ("assistant", [("text", f"Answer {i}: {'red' if i % 2 else 'blue'} #{i * 7}.")])]
        if i % 5 == 4:
            turns = [("system", [("text", "You read documents.")])] + turns + [
                ("user", [("text", "And the year?")]), ("assistant", [("text", f"{2000 + i}.")])]
        n_img = sum(1 for _, parts in turns for p in parts if p[0] == "image")
        recs.append({"id": f"r{i:02d}", "turns": turns, "images": [i] * n_img})
    return recs


def _llava_text(parts) -> str:
    return "".join("<image>\n" if p[0] == "image" else p[1] for p in parts)


def llava(rec: dict, image_ref) -> dict:
    frm = {"user": "human", "assistant": "gpt", "system": "system"}
    out = {"id": rec["id"], "conversations": [{"from": frm[r], "value": _llava_text(p)} for r, p in rec["turns"]]}
    if rec["images"]:
        out["image"] = image_ref(rec["images"][0])
    return out


def messages(rec: dict, images) -> dict:
    msgs = [{"role": r, "content": [{"type": "image"} if p[0] == "image" else {"type": "text", "text": p[1]}
                                    for p in parts]} for r, parts in rec["turns"]]
    return {"id": rec["id"], "messages": msgs, "images": [images(i) for i in rec["images"]]}


def write_all(d: Path) -> dict[str, list[str]]:
    """Every form of :func:`records` under ``d``; returns form -> CLI inputs (with ``images`` root for the file forms)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = records()
    root = d / "images"
    root.mkdir(parents=True)
    for i in range(N_RECORDS):
        (root / f"p{i:02d}.png").write_bytes(png(i))
    path = lambda i: f"p{i:02d}.png"  # noqa: E731
    forms: dict[str, list[str]] = {}

    (d / "llava.jsonl").write_text("".join(json.dumps(llava(r, path)) + "\n" for r in recs))
    forms["llava_jsonl"] = [str(d / "llava.jsonl")]
    (d / "messages.jsonl").write_text("".join(json.dumps(messages(r, path)) + "\n" for r in recs))
    forms["messages_jsonl"] = [str(d / "messages.jsonl")]

    # OneVision-style: id, image {bytes, path} (null for text-only), conversations [{from, value}], two row groups.
    img_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    ov = [llava(r, lambda i: {"bytes": png(i), "path": path(i)}) for r in recs]
    table = pa.table({
        "id": [r["id"] for r in ov],
        "image": pa.array([r.get("image") for r in ov], img_t),
        "conversations": [r["conversations"] for r in ov],
        "data_source": ["test"] * len(ov),
    })
    pq.write_table(table, d / "onevision.parquet", row_group_size=5)
    forms["onevision_parquet"] = [str(d / "onevision.parquet")]

    # HF messages, written by datasets itself: an Image feature list and content parts (structs, nulls pruned).
    hf = [messages(r, lambda i: {"bytes": png(i), "path": path(i)}) for r in recs]
    part = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    feats = datasets.Features({
        "id": datasets.Value("string"),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(part)}),
        "images": datasets.List(datasets.Image()),
    })
    ds = datasets.Dataset.from_list(hf, features=feats)
    ds.to_parquet(str(d / "hf_messages.parquet"), batch_size=4)
    forms["hf_parquet"] = [str(d / "hf_messages.parquet")]
    ds.save_to_disk(str(d / "hf_saved"), num_shards=2)
    forms["save_to_disk"] = [str(d / "hf_saved")]

    # WebDataset: key.png + key.json (LLaVA spelling, no image field: the sample's image members), 2 shards.
    (d / "wds").mkdir()
    for shard, chunk in enumerate((recs[:8], recs[8:])):
        with tarfile.open(d / "wds" / f"shard-{shard:03d}.tar", "w") as tf:
            for r in chunk:
                rec = llava(r, path)
                rec.pop("image", None)
                members = [(f"{r['id']}.json", json.dumps(rec).encode())]
                members += [(f"{r['id']}.png", png(i)) for i in r["images"]]
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    forms["webdataset"] = [str(d / "wds")]
    return forms
