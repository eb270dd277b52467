"""Byte-level fuzzing through the real readers and the whole build (not only the validator).

Hypothesis writes JSONL files (and JSON lists) of hostile lines: arbitrary bytes, JSON escapes with
lone surrogates, non-standard numbers, deep nesting, long strings, byte order marks, CR/CRLF/U+2028
breaks, and records whose images name FIFOs, symlink loops, directories, devices and URLs. Each
example is a real build (real tokenizer, real Arrow, real Pillow). The properties: the build never
raises, never hangs (a deadline per example; a FIFO is never opened), and read = kept + quarantined
per source, in the manifest, the quarantine and the shards; the quarantine is valid UTF-8 JSONL.

Parquet and WebDataset tar inputs get the same properties: hostile cells and members (any text, image
bytes that are garbage, truncated or a bomb header, members without JSON), then bytes of the file itself
overwritten and (tars) cut short. The build either refuses the file by name (``ParsitError``) or
accounts for every row (Parquet: every row its footer declares) and every sample.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from parsit_data.format import QUARANTINE_NAME

from validate_helpers import check_accounting, run_build, save_image, truncated_png

pytestmark = pytest.mark.timeout(240)

#: Image paths under the fuzz image root (made by the fixture), the hostile ones first.
IMAGE_NAMES = ["fifo", "loop", "dir", "devnull", "zero_link", "https://example.com/a.png", "ok.png", "trunc.png",
               "missing.png", "../escape.png", "/etc/passwd", "a\x00b", "", "dir/", "ok.png/"]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzzimg") / "root"
    save_image(root / "ok.png", (32, 32))
    truncated_png(root / "trunc.png")
    os.mkfifo(root / "fifo")  # opening it for reading would block forever
    os.symlink("loop", root / "loop")  # a link to itself: ELOOP
    (root / "dir").mkdir()
    os.symlink("/dev/null", root / "devnull")  # a device, outside the root
    os.symlink("dir/../devnull", root / "zero_link")
    return root


def _escape_all(s: str) -> str:
    """JSON string body with every non-ASCII character (surrogates included) as \\uXXXX escapes."""
    out = []
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif o < 0x20 or o > 0x7E:
            if o > 0xFFFF:
                o -= 0x10000
                out.append(f"\\u{0xD800 + (o >> 10):04x}\\u{0xDC00 + (o & 0x3FF):04x}")
            else:
                out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# Text with anything in it: lone surrogates, NUL, controls, line separators, astral characters.
any_text = st.text(st.characters(codec=None, categories=None), max_size=40)
json_str = any_text.map(_escape_all) | st.sampled_from(['"\\ud800"', '"\\udfff x"', '"\\ud83d\\ude00"', '"\\u0000"',
                                                        '"a\u2028b"', '"<image>"', '"<|im_end|>"', '"\\uDBFF\\uDFFF"'])
number = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "9" * 4301, "1" * 30, "0", "-0.0",
                          "1.5", "01", "1e", "--1", "0x10"])
scalar = json_str | number | st.sampled_from(["true", "false", "null"])


def _value(depth: int = 0):
    if depth > 2:
        return scalar
    return scalar | st.lists(_value(depth + 1), max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]") | \
        st.lists(st.tuples(json_str, _value(depth + 1)), max_size=3).map(
            lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}")


turn = st.builds(lambda role, text: f'{{"from": {role}, "value": {text}}}',
                 st.sampled_from(['"human"', '"gpt"', '"system"', '"hu\\ud800man"', '"robot"']) | json_str,
                 json_str | st.just('"<image>\\nWhat is it?"') | st.just('"fine text"'))
record = st.builds(
    lambda rid, turns, image, extra: "{" + ", ".join(
        x for x in (f'"id": {rid}' if rid else "", f'"conversations": [{", ".join(turns)}]',
                    f'"image": {image}' if image else "", f'"extra": {extra}' if extra else "") if x) + "}",
    st.none() | json_str | number,
    st.lists(turn, max_size=4),
    st.none() | st.sampled_from(IMAGE_NAMES).map(lambda n: json.dumps(n)) | json_str,
    st.none() | _value(),
)
hostile_line = st.one_of(
    record.map(str.encode),
    st.binary(max_size=60).filter(lambda b: b"\n" not in b),
    record.map(lambda r: r.encode("utf-8", "surrogatepass")),  # raw surrogate bytes: not UTF-8
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.integers(1, 3000).map(lambda n: b'{"a": ' + b"[" * n),  # deep and truncated
    st.integers(10_000, 200_000).map(lambda n: b'{"id": "long", "conversations": [{"from": "human", "value": "'
                                     + b"x" * n + b'"}, {"from": "gpt", "value": "y"}]}'),  # a long string
    record.map(lambda r: b"\xef\xbb\xbf" + r.encode()),  # a byte order mark
    st.just(b""), st.just(b"   \t"),
)
separator = st.sampled_from([b"\n", b"\r\n", b"\r", "\u2028".encode(), b"\n\n"])


def _expected_records(data: bytes) -> int:
    """Records are the non-blank ``\\n``-separated lines, a leading byte order mark ignored (docs/REASONS.md)."""
    return sum(1 for line in data.split(b"\n") if line.removeprefix(b"\xef\xbb\xbf").strip())


def _check_quarantine(out: Path) -> None:
    raw = (out / QUARANTINE_NAME).read_bytes()
    for line in raw.decode("utf-8").split("\n")[:-1]:  # strict UTF-8, one JSON object per line
        assert isinstance(json.loads(line), dict)


FUZZ = settings(max_examples=int(os.environ.get("PARSIT_FUZZ_EXAMPLES", "30")), deadline=20_000,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture], derandomize=True)


@FUZZ
@given(lines=st.lists(st.tuples(hostile_line, separator), max_size=8))
def test_jsonl_build_never_raises_and_accounts_for_every_line(lines, image_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fz")
    data = b"".join(line + sep for line, sep in lines)
    src = tmp / "in.jsonl"
    # A fixed first line: a file whose first byte opens a list would be read as a JSON list instead.
    src.write_bytes(b'{"id": "first", "conversations": [{"from": "human", "value": "a"}, '
                    b'{"from": "gpt", "value": "b"}]}\n' + data)
    manifest = run_build([src], tmp / "out", image_root=str(image_root), shard_rows=4, max_length=4096)
    check_accounting(manifest, tmp / "out", {src.stem: _expected_records(src.read_bytes())})
    _check_quarantine(tmp / "out")


@FUZZ
@given(elements=st.lists(hostile_line, max_size=6), bom=st.booleans())
def test_json_list_build_never_raises_and_accounts(elements, bom, image_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fzl")
    src = tmp / "in.json"
    src.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"[" + b", ".join(elements) + b"]")
    manifest = run_build([src], tmp / "out", image_root=str(image_root), shard_rows=4)
    check_accounting(manifest, tmp / "out")
    _check_quarantine(tmp / "out")


# --- Parquet and tar inputs: hostile cells and members, then bytes of the file itself damaged ------------------

cell_text = st.text(st.characters(codec="utf-8"), max_size=30) | st.sampled_from(["<image>\nWhat?", "<|im_end|>", ""])
image_cell = st.none() | st.sampled_from(["ok", "trunc", "bomb", "empty"]) | st.binary(max_size=40)
patches = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=8)), max_size=4)


def _image_bytes(kind, image_root: Path):
    from validate_helpers import png_header_only

    if kind is None or isinstance(kind, bytes):
        return kind
    return {"ok": (image_root / "ok.png").read_bytes(), "trunc": (image_root / "trunc.png").read_bytes(),
            "bomb": png_header_only(50_000, 50_000), "empty": b""}[kind]


def _damage(data: bytes, cuts) -> bytes:
    out = bytearray(data)
    for where, junk in cuts:
        i = int(where * len(out))
        out[i:i + len(junk)] = junk
    return bytes(out)


def _build_or_refused(src: Path, tmp: Path, image_root: Path):
    """The build, or None when the file itself was refused by name (a ParsitError, one error: line)."""
    from parsit_data.errors import ParsitError

    try:
        return run_build([src], tmp / "out", image_root=str(image_root), shard_rows=3, max_length=4096)
    except ParsitError as exc:
        assert src.name in str(exc)
        return None


@FUZZ
@given(rows=st.lists(st.tuples(cell_text, cell_text, image_cell, st.sampled_from(["human", "gpt", "robot", ""])),
                     min_size=1, max_size=7), damage=patches, group=st.integers(1, 4))
def test_parquet_build_never_raises_and_accounts_for_every_row(rows, damage, group, image_root, tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = tmp_path_factory.mktemp("fzp")
    src = tmp / "in.parquet"
    img_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({
        "id": [f"r{i}" for i in range(len(rows))],
        "image": pa.array([None if k is None else {"bytes": _image_bytes(k, image_root), "path": "x.png"}
                           for _, _, k, _ in rows], img_t),
        "conversations": [[{"from": role or "human", "value": q}, {"from": "gpt", "value": a}] for q, a, _, role in rows],
    }), src, row_group_size=group, compression="none")
    src.write_bytes(_damage(src.read_bytes(), damage))
    manifest = _build_or_refused(src, tmp, image_root)
    if manifest is not None:
        import pyarrow.parquet as pq2

        check_accounting(manifest, tmp / "out", {"in": pq2.ParquetFile(src).metadata.num_rows})
        _check_quarantine(tmp / "out")


member_name = st.sampled_from(["k0.json", "k0.png", "k1.json", "k1.jpg", "k1.txt", "d/k2.json", "d/k2.png",
                               "k3.PNG", ".hidden", "noext", "k4.0.png", "k4.json",
                               "l" * 120 + "/k5.json", "l" * 120 + "/k5.png"])  # long names: pax headers
member_data = st.sampled_from(["record", "record_noimg", "ok", "trunc"]) | st.binary(max_size=40)


@FUZZ
@given(members=st.lists(st.tuples(member_name, member_data), max_size=8), cut=st.none() | st.floats(0.1, 1),
       damage=patches)
def test_tar_build_never_raises_and_accounts_for_every_sample(members, cut, damage, image_root, tmp_path_factory):
    import io
    import tarfile

    tmp = tmp_path_factory.mktemp("fzt")
    src = tmp / "in.tar"
    rec = {"conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]}
    payload = {"record": json.dumps(rec).encode(), "record_noimg": json.dumps({**rec, "image": "k9.png"}).encode(),
               "ok": (image_root / "ok.png").read_bytes(), "trunc": (image_root / "trunc.png").read_bytes()}
    with tarfile.open(src, "w") as tf:
        for name, data in members:
            data = payload.get(data, data) if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    data = src.read_bytes()
    data = _damage(data[:int(len(data) * cut)] if cut else data, damage)
    src.write_bytes(data)
    manifest = _build_or_refused(src, tmp, image_root)
    if manifest is not None:
        check_accounting(manifest, tmp / "out")
        _check_quarantine(tmp / "out")


@settings(max_examples=int(os.environ.get("PARSIT_FUZZ_EXAMPLES", "60")), deadline=20_000, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(members=st.lists(st.tuples(member_name, member_data), max_size=8), cut=st.none() | st.floats(0.1, 1),
       damage=patches, rows=st.integers(1, 3), strategy=st.sampled_from(["all", "random:50%", "end:2"]))
@example(members=[("k0.json", "record"), ("l" * 120 + "/k5.json", "record"), ("l" * 120 + "/k5.png", "ok")],
         cut=None, damage=[], rows=1, strategy="all")  # a sample that starts with a pax header starts a partition
def test_a_worker_reads_the_tar_samples_the_streaming_reader_yields(members, cut, damage, rows, strategy,
                                                                    image_root, tmp_path_factory):
    """Each partition of a tar source carries keys (no image bytes) and its worker reads the samples from the
    first one's byte offset: item for item what a front-to-back read gives, whatever the damage."""
    import io
    import tarfile

    from parsit_data.errors import ParsitError
    from parsit_data.partition import iter_partitions
    from parsit_data.sources import expand_inputs, iter_source

    tmp = tmp_path_factory.mktemp("fzk")
    src = tmp / "in.tar"
    rec = {"id": "x", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]}
    payload = {"record": json.dumps(rec).encode(), "record_noimg": json.dumps({**rec, "image": "k9.png"}).encode(),
               "ok": (image_root / "ok.png").read_bytes(), "trunc": (image_root / "trunc.png").read_bytes()}
    with tarfile.open(src, "w") as tf:
        for name, data in members * 2:  # a second round: the same ids again (duplicate_id) further on
            data = payload.get(data, data) if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    data = src.read_bytes()
    src.write_bytes(_damage(data[:int(len(data) * cut)] if cut else data, damage))
    try:
        (spec,) = expand_inputs([str(src)])
    except ParsitError:
        return  # not a tar any more: refused by name (tested elsewhere)
    spec.sampling = strategy

    def plain(r):
        return (r.position, r.kind, r.member, r.raw, r.rejection,
                json.dumps(r.value, default=lambda e: [e.where, e.data.hex()], sort_keys=True))

    parts = list(iter_partitions([spec], rows))
    assert all(p.spec is not None and set(k.value) <= {"id"} for p in parts for k in p.items)
    got = [plain(r) for p in parts for r in p.records()]
    want = [plain(r) for r in iter_source(spec)]
    assert [g[:3] for g in got] == [w[:3] for w in want]
    # the records equal, except that the driver marks a repeated id duplicate_id
    for g, w in zip(got, want):
        assert g[5] == w[5] and g[3] == w[3]
        assert g[4] == w[4] or (g[4].reason == "duplicate_id" and w[4] is None)
