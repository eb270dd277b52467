"""Bad containers: a record that can be named is quarantined with its reason (read = kept + quarantined per
source); a file that cannot be read at all is refused by name with one ``error:`` line, never a traceback,
never shredded into "lines"."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parsit_data.errors import ParsitError

from containers_support import png
from validate_helpers import check_accounting, png_header_only, quarantine_lines, run_build, truncated_png

REPO = Path(__file__).resolve().parents[2]
IMG_T = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _conv(i, image=True):
    return [{"from": "human", "value": ("<image>\n" if image else "") + f"Question {i}?"},
            {"from": "gpt", "value": f"Answer {i}."}]


def _parquet(path: Path, n: int, row_group_size: int = 4, images=None, **kw) -> Path:
    images = images if images is not None else [{"bytes": png(i % 5), "path": f"p{i}.png"} for i in range(n)]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(n)], "image": pa.array(images, IMG_T),
                             "conversations": [_conv(i) for i in range(n)]}),
                   path, row_group_size=row_group_size, **kw)
    return path


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _cli(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parsit_data.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_parquet_file_named_jsonl_is_refused_by_name_not_read_as_lines(tmp_path):
    disguised = tmp_path / "data.jsonl"
    disguised.write_bytes(_parquet(tmp_path / "x.parquet", 6).read_bytes())
    res = _cli(["build", str(disguised), "--out", str(tmp_path / "out"), "--quiet"], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = [x for x in res.stderr.splitlines() if x.strip()]
    assert line.startswith("error:") and "data.jsonl" in line and "Parquet" in line
    assert not (tmp_path / "out" / "quarantine.jsonl").exists()


@pytest.mark.parametrize("damage", ["footer", "not_parquet", "not_tar"])
def test_a_file_that_cannot_be_opened_as_its_container_stops_the_build_naming_it(tmp_path, damage):
    if damage == "footer":
        p = _parquet(tmp_path / "d.parquet", 8)
        data = p.read_bytes()
        p.write_bytes(data[:-12] + b"\0" * 8 + data[-4:])  # footer length garbled, magic intact
    elif damage == "not_parquet":
        (p := tmp_path / "d.parquet").write_text('{"conversations": []}\n')
    else:
        (p := tmp_path / "d.tar").write_text('{"conversations": []}\n' * 40)
    with pytest.raises(ParsitError, match=str(p.name)):
        run_build([p], tmp_path / "out")


def test_wrong_schema_and_wrong_column_types_are_quarantined_per_row(tmp_path):
    a = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"question": ["a?", "b?"], "answer": ["a", "b"]}), a)
    b = tmp_path / "strconv.parquet"
    pq.write_table(pa.table({"id": ["s0", "s1", "s2"], "conversations": ["hi", "there", "you"]}), b)
    c = tmp_path / "intimage.parquet"
    pq.write_table(pa.table({"id": ["i0"], "image": [7], "conversations": [_conv(0)]}), c)
    manifest = run_build([a, b, c], tmp_path / "out")
    check_accounting(manifest, tmp_path / "out", {"qa": 2, "strconv": 3, "intimage": 1})
    q = {s["name"]: s["quarantined"] for s in manifest["sources"]}
    assert q == {"qa": {"missing_conversations": 2}, "strconv": {"missing_conversations": 3},
                 "intimage": {"bad_field": 1}}
    lines = quarantine_lines(tmp_path / "out")
    assert [x["member"] for x in lines if x["source"] == "strconv"] == [f"strconv.parquet row {i}" for i in range(3)]


def test_a_corrupt_row_group_costs_exactly_its_rows(tmp_path):
    p = _parquet(tmp_path / "rg.parquet", 12, row_group_size=4, compression="none")
    meta = pq.ParquetFile(p).metadata
    col = meta.row_group(1).column(2)  # conversations, second row group
    data = bytearray(p.read_bytes())
    start = col.data_page_offset
    data[start:start + 64] = b"\xff" * 64  # the page header: thrift garbage
    p.write_bytes(bytes(data))
    manifest = run_build([p], tmp_path / "out", image_root=None)
    check_accounting(manifest, tmp_path / "out", {"rg": 12})
    (src,) = manifest["sources"]
    assert src["kept"] == 8 and src["quarantined"] == {"unreadable_input": 4}
    lines = quarantine_lines(tmp_path / "out")
    assert [x["member"] for x in lines] == [f"rg.parquet row {i}" for i in range(4, 8)]
    assert all("row group 1" in x["detail"] for x in lines)


def test_embedded_images_go_through_the_same_guards_and_the_quarantine_names_them(tmp_path):
    bad = truncated_png(tmp_path / "t.png").read_bytes()
    images = [{"bytes": png(0), "path": "ok.png"}, {"bytes": bad, "path": "t.png"},
              {"bytes": png_header_only(100_000, 100_000), "path": "bomb.png"}, {"bytes": b"", "path": "e.png"},
              {"bytes": None, "path": "on_disk.png"}]
    p = _parquet(tmp_path / "emb.parquet", 5, images=images)
    manifest = run_build([p], tmp_path / "out")
    check_accounting(manifest, tmp_path / "out", {"emb": 5})
    lines = {x["member"]: x for x in quarantine_lines(tmp_path / "out")}
    assert {k: v["reason"] for k, v in lines.items()} == {
        "emb.parquet row 1": "image_unreadable", "emb.parquet row 2": "image_too_large",
        "emb.parquet row 3": "image_unreadable", "emb.parquet row 4": "image_missing"}
    assert "emb.parquet row 1 image" in lines["emb.parquet row 1"]["detail"]
    # where the bytes are and how many, never the bytes
    assert lines["emb.parquet row 1"]["record"]["image"] == {"embedded": "emb.parquet row 1 image", "bytes": len(bad)}
    assert lines["emb.parquet row 4"]["record"]["image"] == "on_disk.png"  # a struct without bytes is a path
    assert len((tmp_path / "out" / "quarantine.jsonl").read_bytes()) < 4000


def test_tar_samples_without_json_or_image_and_a_truncated_member(tmp_path):
    ok = lambda k, i: [(f"{k}.json", json.dumps({"id": k, "conversations": _conv(i)}).encode()),  # noqa: E731
                       (f"{k}.png", png(i))]
    a = _tar(tmp_path / "a.tar", [*ok("k0", 0), ("k1.png", png(1)),  # an image without its JSON
                                  (f"k2.json", json.dumps({"id": "k2", "conversations": _conv(2)}).encode()),
                                  ("k3.json", b"{not json"), ("k3.png", png(3)), *ok("k4", 4),
                                  ("k5.json", b'{"id": "k5", "conversations": [{"from": "human", "value": "\\ud800"}, '
                                              b'{"from": "gpt", "value": "x"}]}'),
                                  ("k6.json", b"[" * 3000 + b"]" * 3000)])
    b = _tar(tmp_path / "b.tar", [*ok("m0", 0), *ok("m1", 1), ("m2.json", json.dumps({"id": "m2", "conversations": _conv(2)}).encode()),
                                  ("m2.png", png(2) * 40)])
    data = b.read_bytes()
    cut = data.index(png(2) * 2) + 100  # inside m2.png's data
    b.write_bytes(data[:cut])
    manifest = run_build([a, b], tmp_path / "out")
    check_accounting(manifest, tmp_path / "out", {"a": 7, "b": 3})
    q = {s["name"]: s["quarantined"] for s in manifest["sources"]}
    assert q["a"] == {"missing_conversations": 1, "image_placeholder_mismatch": 1, "invalid_json": 2,
                      "invalid_unicode": 1}
    assert q["b"] == {"unreadable_input": 1}
    lines = {x["member"]: x for x in quarantine_lines(tmp_path / "out")}
    assert lines["a.tar:k1"]["reason"] == "missing_conversations" and "k1.png" in lines["a.tar:k1"]["detail"]
    assert lines["b.tar:m2"]["reason"] == "unreadable_input" and "m2.png" in lines["b.tar:m2"]["detail"]


def test_an_arrow_file_that_breaks_off_costs_one_named_item_and_the_next_file_is_read(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"id": f"a{i}", "conversations": _conv(i, image=False)} for i in range(30)])
    ds.save_to_disk(str(tmp_path / "saved"), num_shards=2, max_shard_size=None)
    files = sorted((tmp_path / "saved").glob("*.arrow"))
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) * 2 // 3])  # the stream breaks off inside its data
    manifest = run_build([tmp_path / "saved"], tmp_path / "out")
    check_accounting(manifest, tmp_path / "out")
    (src,) = manifest["sources"]
    assert src["format"] == "arrow" and src["quarantined"] == {"unreadable_input": 1}
    assert src["kept"] >= 15  # the second file whole, and what the first held before the break
    (line,) = quarantine_lines(tmp_path / "out")
    assert line["member"].startswith(files[0].name) and files[0].name in line["detail"]
