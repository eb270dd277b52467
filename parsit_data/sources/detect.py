"""From what the user names (CLI inputs, a YAML mixture's ``json_path``) to :class:`SourceSpec`s: the
container is decided from the path, and a file whose content is not what that container's reader expects
is refused by name (a :class:`ParsitError`, one ``error:`` line) instead of being read as lines.

| path | container | files |
|---|---|---|
| ``x.jsonl`` / ``x.json`` (any other name) | ``jsonl`` or ``json`` (first byte ``[``) | the file |
| ``x.parquet``, a folder of ``*.parquet``, a glob | ``parquet`` | sorted |
| ``x.arrow``, a ``datasets.save_to_disk`` folder | ``arrow`` | ``state.json``'s data files, in order |
| ``x.tar``, a folder of ``*.tar``, a glob | ``webdataset`` | sorted |
| ``x.yaml`` / ``x.yml`` | a mixture of the above | |
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import json
from pathlib import Path

import yaml

from parsit_data.errors import ParsitError
from parsit_data.format import sha256_file
from parsit_data.format.fsio import RemotePath, location, open_input
from parsit_data.sources.raw import SourceSpec, files_sha256
from parsit_data.sources.sampling import STRATEGY

_BOM = b"\xef\xbb\xbf"
_SUFFIX_FORMAT = {".parquet": "parquet", ".arrow": "arrow", ".tar": "webdataset"}
#: Magic numbers of binary containers: a .json/.jsonl file that starts with one is refused, not read as lines.
_MAGIC = ((b"PAR1", "a Parquet file (name it .parquet)"), (b"ARROW1", "an Arrow IPC file (name it .arrow)"),
          (b"\xff\xff\xff\xff", "an Arrow IPC stream (name it .arrow)"), (b"\x1f\x8b\x08", "gzip-compressed"),
          (b"\x28\xb5\x2f\xfd", "zstd-compressed"), (b"PK\x03\x04", "a zip archive"))


def _head(path, n: int = 512) -> bytes:
    with open_input(path) as f:
        return f.read(n)


def _json_kind(path) -> str:
    """``json`` when the first non-blank byte (after a byte order mark) opens a list, else ``jsonl``;
    a binary container is refused by name."""
    head = _head(path)
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise ParsitError(f"input {path} is {what}, not JSON or JSONL")
    if len(head) > 262 and head[257:262] == b"ustar":
        raise ParsitError(f"input {path} is a tar archive, not JSON or JSONL (name it .tar for WebDataset shards)")
    with open_input(path) as f:
        first = True
        while True:
            chunk = f.read(4096)
            if not chunk:
                return "jsonl"
            if first and chunk.startswith(_BOM):
                chunk = chunk[3:]
            first = False
            stripped = chunk.lstrip()
            if stripped:
                return "json" if stripped[:1] == b"[" else "jsonl"


def _check_content(fmt: str, path) -> None:
    """A Parquet/Arrow/tar file must start like one; else it is refused by name."""
    head = _head(path, 512)
    if fmt == "parquet":
        ok = head.startswith(b"PAR1")
    elif fmt == "arrow":
        ok = head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff")
    else:
        ok = len(head) >= 262 and head[257:262] == b"ustar"
    if not ok:
        kind = {"parquet": "a Parquet file", "arrow": "an Arrow IPC file or stream", "webdataset": "a tar archive"}[fmt]
        raise ParsitError(f"input {path} is not {kind} (its first bytes say otherwise): refusing to read it")
    if fmt == "parquet":
        from parsit_data.sources.arrow import parquet_metadata

        parquet_metadata(path)  # a corrupt footer is refused here, by name


def _glob(pattern: str) -> list:
    """Files matching a glob; on an object store only the last path component may hold wildcards."""
    if "://" not in pattern:
        return [Path(p) for p in sorted(globlib.glob(pattern))]
    base, _, pat = pattern.rpartition("/")
    folder = location(base, "input")
    return sorted((p for p in folder.iterdir() if fnmatch.fnmatch(p.name, pat)), key=str)


def _folder(p) -> tuple[str, list]:
    names = {c.name: c for c in p.iterdir()}
    if "state.json" in names:  # datasets.Dataset.save_to_disk
        try:
            state = json.loads(names["state.json"].read_bytes())
            files = [p / d["filename"] for d in state["_data_files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ParsitError(f"input {p}: state.json is not a datasets save_to_disk state ({exc})") from None
        return "arrow", files
    if "dataset_dict.json" in names:
        splits = sorted(n for n, c in names.items() if c.is_dir())
        raise ParsitError(f"input {p} is a DatasetDict folder: name one split ({', '.join(splits)}), e.g. {p}/{splits[0] if splits else 'train'}")
    for suffix, fmt in _SUFFIX_FORMAT.items():
        files = sorted((c for n, c in names.items() if n.endswith(suffix)), key=str)
        if files:
            return fmt, files
    raise ParsitError(f"input {p} is a folder with no .parquet, .arrow or .tar files and no datasets state.json")


def resolve(where, what: str = "input") -> tuple[object, str, list]:
    """``(location, format, files)`` for one input; a ParsitError naming it when it cannot be read."""
    text = str(where)
    if any(c in text for c in "*?["):
        files = _glob(text)
        if not files:
            raise ParsitError(f"{what} {text}: no file matches")
        fmts = {_SUFFIX_FORMAT.get(Path(str(f)).suffix.lower()) for f in files}
        if len(fmts) != 1 or None in fmts:
            raise ParsitError(f"{what} {text}: a glob must match .parquet, .arrow or .tar files of one kind")
        fmt = fmts.pop()
        for f in files:
            _check_content(fmt, f)
        return text, fmt, files
    p = location(where, what)
    if p.is_dir():
        fmt, files = _folder(p)
        for f in files:
            if not f.is_file():
                raise ParsitError(f"{what} {p}: {f} does not exist")
            _check_content(fmt, f)
        return p, fmt, files
    if not p.is_file():
        raise ParsitError(f"{what} {p} does not exist (or is not a file)")
    fmt = _SUFFIX_FORMAT.get(p.suffix.lower())
    if fmt is None:
        return p, _json_kind(p), [p]
    _check_content(fmt, p)
    return p, fmt, [p]


def _stem(path) -> str:
    name = str(path).rstrip("/").rsplit("/", 1)[-1]
    return name.split("*")[0].rstrip("-_.") or "input" if "*" in name else Path(name).stem


def expand_inputs(inputs: list, seed: int = 0) -> list[SourceSpec]:
    """Turn CLI inputs (files, folders, globs, YAML mixtures) into source specs, in order."""
    specs: list[SourceSpec] = []
    for inp in inputs:
        text = str(inp)
        if not any(c in text for c in "*?[") and location(inp, "input").suffix.lower() in {".yaml", ".yml"}:
            p = location(inp, "input")
            if not p.is_file():
                raise ParsitError(f"input {p} does not exist (or is not a file)")
            specs.extend(_read_mixture(p))
        else:
            loc, fmt, files = resolve(inp)
            specs.append(SourceSpec(name=_stem(loc), path=loc, format=fmt, files=files))
    seen: dict[str, int] = {}
    for i, s in enumerate(specs):
        # Unique, stable source names: a second "train.jsonl" becomes "train-2".
        n = seen.get(s.name, 0) + 1
        seen[s.name] = n
        if n > 1:
            s.name = f"{s.name}-{n}"
        s.seed = seed * 1_000_003 + i
        s.sha256 = files_sha256(s.files, sha256_file)
    return specs


def _read_mixture(path) -> list[SourceSpec]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ParsitError(f"{path}: not a readable YAML file: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), list):
        raise ParsitError(f"{path}: a mixture file needs a top-level 'datasets:' list")
    out: list[SourceSpec] = []
    problems: list[str] = []
    for i, entry in enumerate(doc["datasets"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("json_path"), str):
            problems.append(f"datasets[{i}]: needs a 'json_path' string")
            continue
        strategy = str(entry.get("sampling_strategy", "all")).strip()
        if not STRATEGY.match(strategy):
            problems.append(
                f"datasets[{i}]: sampling_strategy {strategy!r} is not one of all, first:N, first:N%, "
                "end:N, end:N%, random:N, random:N%"
            )
            continue
        raw = entry["json_path"]
        jp = location(raw, f"datasets[{i}].json_path")
        if not jp.is_absolute():
            jp = path.parent / str(jp) if isinstance(path, RemotePath) else path.parent / jp
        try:
            loc, fmt, files = resolve(str(jp) if any(c in raw for c in "*?[") else jp, f"datasets[{i}].json_path")
        except ParsitError as exc:
            problems.append(str(exc))
            continue
        name = str(entry.get("name") or _stem(loc))
        out.append(SourceSpec(name=name, path=loc, sampling=strategy, format=fmt, files=files,
                              meta={"mixture": str(path)}))
    if problems:
        raise ParsitError(f"{path}: " + "; ".join(problems))
    return out
