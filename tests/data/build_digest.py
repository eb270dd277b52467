"""A digest of a build directory's bytes that ignores only what a refactor may legitimately change.

Written against pyarrow and the JSON files alone (no parsit_data import), so the same function can
digest a build made by any commit (the build itself is made by the commit under test). ``tests/data/fixtures/demo_build_digest.json`` holds the digest of
the demo build made by commit aa7e308 (before the ``parsit_data.format`` refactor); regenerate it with

    git archive aa7e308 | tar -x -C /tmp/pre && cd /tmp/pre && ln -s /work/main/.venv .venv
    PYTHONPATH=$PWD .venv/bin/python /path/to/repo/tests/data/build_digest.py /tmp/builds \
      > /path/to/repo/tests/data/fixtures/demo_build_digest.json

(it builds each of :data:`VARIANTS` from the current directory with relative paths, so the config
hash does not depend on where the repository lives, and prints their digests).

What is left out, and why:

- a shard's *schema metadata* (format version 2 adds the config hash, tokenizer fingerprint and
  template name; docs/FORMAT.md); each record batch is hashed as its IPC message, which holds the data
  and no schema, and the schema is hashed without its metadata;
- ``format_version`` and the whole-file ``bytes``/``sha256`` of each shard (in the manifest, its part
  files and the report), which change with the metadata;
- ``timing`` (the only part that differs between identical builds) and ``tokenizer.path`` / the output
  directory, which depend on where the repository and the build live;
- what issue 24 (the LLaVA-NeXT / OneVision families) added beside the unchanged shards: the vision entry's
  new keys (manifest and report), the partitions' ``image_crops`` histogram and ``top_images``, the
  report's ``image_crops`` distributions and ``top_images``, and the report page's "Images" and
  "Tokenizer and vision" sections (which show them);
- the report page's "Sources" table, to which issue 23 added each source's format (its numbers are in
  ``report.json``, which is still compared whole);
- what issue 20 (video, format version 3) added: the shards' video columns (each batch is hashed without
  them, so the other columns must be byte-identical) and the manifest's ``video`` entry.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pyarrow as pa


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: The columns issue 20 appended (format version 3), left out of the digest.
_VIDEO_COLUMNS = ("video_path", "video_frames", "video_frame_indices", "video_frame_times", "video_info",
                  "num_video_tokens")


def shard_digest(path: Path) -> dict:
    reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    keep = [n for n in reader.schema.names if n not in _VIDEO_COLUMNS]
    batches = [_h(b.select(keep).serialize().to_pybytes()) for b in reader]
    schema = pa.schema([reader.schema.field(n) for n in keep])
    return {"schema": _h(schema.serialize().to_pybytes()), "batches": batches}


#: The vision entry's keys before the families (issue 24); the others are left out of the digest.
_OLD_VISION = ("image_size", "patch_size", "aspect", "tokens_per_image", "grid_pinpoints")


def _drop_issue24(data: dict) -> None:
    """Leave out what the families added (see the module docstring); the rest must be byte-identical."""
    if isinstance(data.get("vision"), dict):
        data["vision"] = {k: v for k, v in data["vision"].items() if k in _OLD_VISION}
    data.pop("top_images", None)
    if isinstance(data.get("overall"), dict):
        data["overall"].pop("image_crops", None)
    for s in data.get("sources", []):
        if isinstance(s, dict) and isinstance(s.get("distributions"), dict):
            s["distributions"].pop("image_crops", None)
    for d in ((data.get("stats") or {}).get("dists") or {}).values():
        d.get("hists", {}).pop("image_crops", None)
        d.pop("top_images", None)


def _json_norm(data):
    data = json.loads(json.dumps(data))
    _drop_issue24(data)
    data.pop("format_version", None)
    data.pop("timing", None)
    data.pop("video", None)  # issue 20
    tok = data.get("tokenizer")
    if isinstance(tok, dict):
        tok.pop("path", None)
    for s in data.get("shards", []):
        if isinstance(s, dict):
            s.pop("bytes", None)
            s.pop("sha256", None)
    if isinstance(data.get("summary"), dict):
        data["summary"].pop("shard_bytes", None)
    return data


def _canon(data) -> str:
    """Key order kept: it is part of the bytes."""
    return _h(json.dumps(data, ensure_ascii=False).encode())


def build_digest(build: Path) -> dict:
    build = Path(build)
    manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
    report = json.loads((build / "report.json").read_text(encoding="utf-8"))
    html = (build / "report.html").read_text(encoding="utf-8")
    html = html.replace(str(build), "OUT").replace(manifest["tokenizer"]["path"], "TOKENIZER")
    html = re.sub(r"format v\d+", "format vN", html)
    html = re.sub(r'<section id="(images|tokenizer|sources)">.*?</section>', "", html, flags=re.S)
    parts = {}
    for p in sorted((build / "_parts").glob("part-*.json")):
        meta = json.loads(p.read_text(encoding="utf-8"))
        _drop_issue24(meta)
        meta["shard"].pop("bytes", None)
        meta["shard"].pop("sha256", None)
        parts[p.name] = _canon(meta)
    return {
        "config_hash": manifest["config_hash"],
        "totals": manifest["totals"],
        "shards": {p.name: shard_digest(p) for p in sorted((build / "shards").glob("*.arrow"))},
        "quarantine.jsonl": _h((build / "quarantine.jsonl").read_bytes()),
        "quarantine_parts": {p.name: _h(p.read_bytes()) for p in sorted((build / "_parts").glob("quarantine-*.jsonl"))},
        "parts": parts,
        "manifest": _canon(_json_norm(manifest)),
        "report.json": _canon(_json_norm(report)),
        "report.html": _h(html.encode()),
    }


#: The builds the fixture holds: the README's demo build, and two that exercise truncation, the vicuna
#: template, the llava-next label policy and a system prompt. Options on top of the demo's inputs.
VARIANTS: dict[str, dict] = {
    "demo": {},
    "llava_v1-truncate": {"template": "llava_v1", "max_length": 790, "overlong": "truncate"},
    "llava-next-policy": {"label_policy": "llava-next", "system_prompt": "Be brief.", "max_length": 790},
}


def build_variant(name: str, out: Path) -> Path:
    """Build ``VARIANTS[name]`` into ``out``, from the current directory (a repository root)."""
    from parsit_data.build import build
    from parsit_data.config import BuildConfig

    # Near duplicates (issue 21) off: the fixture is of a Parsit without them, and a build with them off and no
    # eval set must be that build byte for byte (config hash included). The field test keeps this runnable from
    # the fixture's old checkout.
    off = {"near_duplicates": "off"} if "near_duplicates" in BuildConfig.model_fields else {}
    build(BuildConfig(inputs=["examples/demo/mixture.yaml"], image_root="examples/demo/images", out=str(out),
                      shard_rows=16, **VARIANTS[name], **off))
    return out


if __name__ == "__main__":
    tmp = Path(sys.argv[1])
    digests = {name: build_digest(build_variant(name, tmp / name)) for name in VARIANTS}
    print(json.dumps({"_comment": "Digests of builds made by commit aa7e308 (before parsit_data.format), with "
                                  "tests/data/build_digest.py run from a `git archive aa7e308` checkout: see that "
                                  "module's docstring. Do not edit by hand.",
                      "commit": "aa7e308", "variants": digests}, indent=1))
