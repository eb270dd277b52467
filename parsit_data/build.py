"""``build``: sources -> partitions -> engine -> manifest. The library entry point of the build stage.

Data moves forward: the driver streams every source once (validating ids for duplicates, since that
needs the whole build), cuts the records into partitions of ``shard_rows`` records, skips partitions a
previous run finished (verified by checksum), hands the rest to the engine, and finally merges the
per-partition quarantine and statistics and writes the manifest, last and atomically.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from parsit_data import __version__
from parsit_data.config import BuildConfig, config_hash
from parsit_data.constants import (FORMAT_VERSION, IGNORE_INDEX, IMAGE_TOKEN_INDEX, MANIFEST_NAME, PARTS_DIR,
                                   QUARANTINE_NAME, SHARDS_DIR)
from parsit_data.errors import ParsitError
from parsit_data.manifest import Manifest
from parsit_data.pipeline import Partition, PartitionResult, quarantine_part_path, reuse_finished
from parsit_data.records import Rejection
from parsit_data.shards import atomic_write_bytes
from parsit_data.sources import RawItem, SourceSpec, expand_inputs, iter_source
from parsit_data.stats import PartitionStats
from parsit_data.templates import LABEL_POLICIES, check_template, get_template, template_manifest
from parsit_data.tokenizer import describe_tokenizer
from parsit_data.validate import control_tokens_of, sample_id_of

log = logging.getLogger(__name__)


def _partitions(specs: list[SourceSpec], shard_rows: int) -> Iterator[Partition]:
    """Stream the sources into partitions (one source per partition), marking duplicate ids."""
    seen: set[str] = set()
    index = 0
    for spec in specs:
        items: list[RawItem] = []
        for item in iter_source(spec):
            if item.rejection is None:
                sid = sample_id_of(item.value, item.source, item.position)
                if sid in seen:
                    item = RawItem(item.source, item.position, item.kind, value=item.value,
                                   rejection=Rejection("duplicate_id", f"id {sid!r} already appeared earlier in this build"))
                else:
                    seen.add(sid)
            items.append(item)
            if len(items) >= shard_rows:
                yield Partition(index, spec.name, items)
                index, items = index + 1, []
        if items:
            yield Partition(index, spec.name, items)
            index += 1


def _check_out_dir(out: Path, chash: str, overwrite: bool) -> None:
    manifest = out / MANIFEST_NAME
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text()).get("config_hash")
        except (OSError, json.JSONDecodeError):
            old = None
        if old != chash:
            if not overwrite:
                raise ParsitError(
                    f"{out} holds a finished build of other inputs or options: pass --overwrite to replace it, "
                    "or choose another --out"
                )
        # From here on the directory is an unfinished build until the new manifest lands.
        manifest.unlink()
    if overwrite:
        for sub in (SHARDS_DIR, PARTS_DIR):
            shutil.rmtree(out / sub, ignore_errors=True)
    (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)


def _engine(name: str, config: BuildConfig | None = None, specs: list[SourceSpec] = ()):
    if name == "auto":
        from parsit_data.engines.choose import choose_engine

        name, why = choose_engine(config, specs)
        log.info("--engine auto: %s (%s)", name, why)
    if name == "local":
        from parsit_data.engines import local

        return local.run
    if name == "ray":
        try:
            from parsit_data.engines import ray as ray_engine
        except ImportError as exc:
            raise ParsitError(f"--engine ray is not available: {exc}") from exc
        return ray_engine.run
    raise ParsitError(f"unknown engine {name!r}: choose local or ray")


def build(config: BuildConfig, on_progress=None, on_start=None) -> dict:
    """Run a build; returns the manifest (also written to ``OUT/manifest.json``).

    ``on_start(specs)`` is called once the sources are known (the CLI counts records for its ETA);
    ``on_progress(result)`` once per partition, reused ones included.
    """
    started = time.time()
    if config.label_policy not in LABEL_POLICIES:
        raise ParsitError(f"unknown label policy {config.label_policy!r}: choose one of {', '.join(LABEL_POLICIES)}")
    template = get_template(config.template, config.tokenizer)
    tok, tok_info = describe_tokenizer(config.tokenizer, config.pad_token)
    check_template(template, tok, config.label_policy, config.system_prompt)
    template_block = template_manifest(template, tok, config.label_policy, config.system_prompt)
    if config.image_root and not Path(config.image_root).is_dir():
        raise ParsitError(f"--image-root {config.image_root} is not a directory")
    specs = expand_inputs(config.inputs, config.seed)
    fingerprints = {"tokenizer": tok_info.sha256, "sources": [s.sha256 for s in specs]}
    chash = config_hash(config.output_config(), fingerprints)
    out = Path(config.out)
    _check_out_dir(out, chash, config.overwrite)
    if on_start:
        on_start(specs)

    # Control tokens of the template and every special token of the tokenizer: never allowed in text.
    control = control_tokens_of(template, tok)

    results: dict[int, PartitionResult] = {}

    def on_result(r: PartitionResult) -> None:
        results[r.index] = r
        if on_progress:
            on_progress(r)

    def todo() -> Iterator[Partition]:
        for part in _partitions(specs, config.shard_rows):
            done = reuse_finished(out, part.index, chash)
            if done is not None:
                log.info("partition %d reused (checksum verified)", part.index)
                on_result(done)
            else:
                yield part

    _engine(config.engine, config, specs)(todo(), config, chash, control, out, on_result)
    return _finalize(out, config, chash, tok_info, template_block, specs, results, started)


def _finalize(out: Path, config: BuildConfig, chash: str, tok_info, template_block: dict, specs, results,
              started) -> dict:
    indices = sorted(results)
    if indices != list(range(len(indices))):
        raise ParsitError(f"internal: partitions missing from the build: got {indices}")  # a bug, not bad input
    # Merge quarantine parts in partition order.
    qdata = b"".join(quarantine_part_path(out, i).read_bytes() for i in indices)
    atomic_write_bytes(out / QUARANTINE_NAME, qdata)
    # Remove files of an earlier, larger build in the same directory.
    keep = {Path(results[i].shard["path"]).name for i in indices}
    for f in (out / SHARDS_DIR).iterdir():
        if f.name not in keep:
            f.unlink()

    stats = PartitionStats()
    for i in indices:
        stats.merge(results[i].stats)
    sources = []
    totals = {"read": 0, "kept": 0, "quarantined": 0, "truncated": 0, "tokens": 0, "supervised_tokens": 0,
              "images": 0}
    for spec in specs:
        s = stats.sources.get(spec.name)
        sj = s.to_json() if s else PartitionStats().source(spec.name).to_json()
        q = sum(sj["quarantined"].values())
        if sj["read"] != sj["kept"] + q:
            raise AssertionError(f"accounting broken for {spec.name}: {sj}")  # internal invariant
        sources.append({**spec.to_json(), **sj})
        totals["read"] += sj["read"]
        totals["kept"] += sj["kept"]
        totals["quarantined"] += q
        totals["truncated"] += sj["truncated"]
        totals["tokens"] += sj["tokens"]
        totals["supervised_tokens"] += sj["supervised_tokens"]
        totals["images"] += sj["images"]

    manifest = {
        "format_version": FORMAT_VERSION,
        "parsit_version": __version__,
        "config": config.output_config(),
        "config_hash": chash,
        "tokenizer": tok_info.to_json(),
        "template": template_block,
        "image_token_index": IMAGE_TOKEN_INDEX,
        "ignore_index": IGNORE_INDEX,
        "vision": config.geometry.to_json(),
        "sources": sources,
        "totals": totals,
        "shards": [results[i].shard for i in indices],
    }
    _write_report(out, manifest, stats)
    finished = time.time()
    manifest["timing"] = {
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "finished_at": datetime.fromtimestamp(finished, timezone.utc).isoformat(),
        "seconds": round(finished - started, 3),
    }
    Manifest.model_validate(manifest)  # the contract, accounting included; a failure here is a bug
    atomic_write_bytes(out / MANIFEST_NAME, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    return manifest


def _write_report(out: Path, manifest: dict, stats: PartitionStats) -> None:
    """Hook for the data quality report (see parsit_data.report); a no-op until it exists."""
    try:
        from parsit_data import report
    except ImportError:
        return
    report.write_report(out, manifest, stats)
