"""The format package is the only place that knows a build's files and reads shard bytes.

Outside ``parsit_data/format`` no code names a build file (``"manifest.json"`` ...) or calls ``pa.ipc``: they
go through :func:`parsit_data.format.build_files`, :func:`~parsit_data.format.write_manifest`,
:func:`~parsit_data.format.shard_batches` and :func:`~parsit_data.format.read_shard_index`, so a change of
layout touches one package. The helpers themselves are checked on a real build.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from parsit_data.format import (INDEX_COLUMNS, SHARD_SCHEMA, build_files, load_manifest, open_build, read_index_file,
                                read_shard_index, shard_batches, write_index_file, write_manifest)
from parsit_data.format.fsio import location

ROOT = Path(__file__).resolve().parents[2]
FILE_NAMES = {"manifest.json", "quarantine.jsonl", "report.json", "report.html"}


def _offences(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Constant) and node.value in FILE_NAMES:
            out.append(f"{path.relative_to(ROOT)}:{node.lineno} names {node.value!r}")
        if isinstance(node, ast.Attribute) and node.attr == "ipc":
            out.append(f"{path.relative_to(ROOT)}:{node.lineno} reads Arrow IPC itself")
    return out


def test_only_the_format_package_names_build_files_or_reads_shard_bytes():
    # parsit_data/sources reads the users' own Arrow files (datasets' save_to_disk): inputs, not a build's files
    files = [p for pkg in ("parsit_data", "parsit_train") for p in sorted((ROOT / pkg).rglob("*.py"))
             if "format" not in p.relative_to(ROOT).parts and p.relative_to(ROOT).parts[:2] != ("parsit_data", "sources")]
    assert len(files) > 50
    offences = [o for p in files for o in _offences(p)]
    assert offences == [], "\n".join(offences)
    # The check itself sees what it looks for (in the format package, where it belongs).
    assert _offences(ROOT / "parsit_data/format/constants.py") and _offences(ROOT / "parsit_data/format/reader.py")


def test_build_files_index_and_manifest_on_a_real_build(tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "train"))
    from train_support import make_build

    root = make_build(tmp_path, "b", n_image=5, n_text=4, shard_rows=4)
    files = build_files(root)
    assert files.manifest.is_file() and files.quarantine.is_file() and files.shards.is_dir()
    build = open_build(root)
    assert [files.shard(i) for i in range(len(build.shards))] == [root / s.path for s in build.shards]

    # The index: the rows' index columns only, the same values as the full rows.
    for k, path in enumerate(build.shard_paths):
        full = pa.Table.from_batches(shard_batches(path))
        index = read_shard_index(path)
        assert index.column_names == list(INDEX_COLUMNS) and index.num_rows == build.shards[k].rows
        assert index.equals(full.select(list(INDEX_COLUMNS)).combine_chunks())
        write_index_file(index, tmp_path / f"i{k}.arrow")
        assert read_index_file(tmp_path / f"i{k}.arrow").equals(index)

    # A file that is not a shard: a ParsitError naming it, not a traceback of pyarrow.
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(b"not arrow")
    from parsit_data.errors import ParsitError

    with pytest.raises(ParsitError, match="cannot read shard"):
        read_shard_index(bad)

    # The manifest written through the contract reads back equal.
    manifest = load_manifest(root)
    files.manifest.unlink()
    assert write_manifest(root, manifest) == files.manifest and load_manifest(root) == manifest
    assert build_files(location(str(root))).manifest == files.manifest
    assert set(SHARD_SCHEMA.names) >= set(INDEX_COLUMNS)
