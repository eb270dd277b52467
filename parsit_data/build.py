"""``build``: sources -> partitions -> engine -> manifest. The library entry point of the build stage.

Data moves forward: the driver streams every source once (validating ids for duplicates, since that
needs the whole build), cuts the records into partitions of ``shard_rows`` records, skips partitions a
previous run finished (verified by checksum), hands the rest to the engine, and finally merges the
per-partition quarantine and statistics and writes the manifest, last and atomically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from parsit_data import __version__
from parsit_data.config import BuildConfig, config_hash
from parsit_data.errors import ParsitError
from parsit_data.format import (FORMAT_VERSION, IGNORE_INDEX, IMAGE_TOKEN_INDEX, Manifest, ShardEntry, ShardMeta,
                                SourceEntry, Timing, TokenizerEntry, Totals, VideoEntry, VisionEntry,
                                atomic_write_bytes, build_files, load_manifest, quarantine_part_path, write_manifest)
from parsit_data import dedup
from parsit_data.commit import PartitionResult, reuse_finished
from parsit_data.dedup.section import DEDUP_NAME
from parsit_data.dedup.signatures import sig_path
from parsit_data.engines.choose import choose_engine
from parsit_data.partition import Partition, iter_partitions
from parsit_data.format.fsio import RETRIES, RemotePath, location, rmtree
from parsit_data.images import check_image_root
from parsit_data.report import write_report
from parsit_data.sources import expand_inputs
from parsit_data.stats import PartitionStats
from parsit_data.mask_report import check_template, template_manifest
from parsit_data.templates import get_template
from parsit_data.tokenizer import describe_tokenizer
from parsit_data.validate import control_tokens_of
from parsit_data.worker import WorkerSpec

log = logging.getLogger(__name__)


def _check_out_dir(out: Path | RemotePath, chash: str, overwrite: bool) -> None:
    files = build_files(out)
    manifest = files.manifest
    if manifest.is_file():
        try:
            old = load_manifest(out).config_hash
        except ParsitError:  # unreadable, foreign or of another format version: not this build
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
        for sub in (files.shards, files.parts):
            rmtree(sub)
    files.shards.mkdir(parents=True, exist_ok=True)
    files.parts.mkdir(parents=True, exist_ok=True)


def build(config: BuildConfig, on_progress=None, on_start=None) -> Manifest:
    """Run a build; returns the manifest (also written to ``OUT/manifest.json``).

    ``on_start(specs, engine)`` is called once the sources are known and the engine chosen (the CLI counts
    records for its ETA and says which engine runs);
    ``on_progress(result)`` once per partition, reused ones included.
    """
    started = time.time()
    geometry = config.geometry  # a --processor folder that is not a LLaVA family: one error, before any work
    template = get_template(config.template, config.tokenizer)
    tok, tok_info = describe_tokenizer(config.tokenizer, config.pad_token)
    check_template(template, tok, config.label_policy, config.system_prompt)
    template_block = template_manifest(template, tok, config.label_policy, config.system_prompt)
    if config.image_root:
        check_image_root(location(config.image_root, "--image-root"))
    specs = expand_inputs(config.inputs, config.seed)
    fingerprints = {"tokenizer": tok_info.sha256, "sources": [s.sha256 for s in specs]}
    if config.processor:  # the folder's configs decide the counts: another folder at the same path is another build
        fingerprints["vision"] = geometry.to_json()
    video = config.video_spec  # a folder's unreadable video config: one error, before any work
    if video is not None:
        fingerprints["video"] = video.to_json()
    if config.eval_set:  # the eval sets decide contamination: their bytes are part of the build
        fingerprints["eval_sets"] = [s.sha256 for s in expand_inputs(config.eval_set, config.seed)]
    chash = config_hash(config.output_config(), fingerprints)
    out = location(config.out, "--out")  # a URI opens its store here, at start: an error before any work
    _check_out_dir(out, chash, config.overwrite)
    engine = choose_engine(config, specs)
    if config.engine == "auto":
        log.info("--engine auto: %s (%s)", engine.name, engine.why)
    if on_start:
        on_start(specs, engine)

    # Control tokens of the template and every special token of the tokenizer: never allowed in text.
    control = control_tokens_of(template, tok)

    results: dict[int, PartitionResult] = {}

    def on_result(r: PartitionResult) -> None:
        results[r.index] = r
        if on_progress:
            on_progress(r)

    shard_meta = ShardMeta(chash, tok_info.sha256, config.template)

    def todo() -> Iterator[Partition]:
        for part in iter_partitions(specs, config.shard_rows):
            done = reuse_finished(out, part.index, shard_meta)
            if done is not None and config.dedup_enabled and not sig_path(out, part.index).is_file():
                done = None  # committed without signatures: rebuilt to have them
            if done is not None:
                log.info("partition %d reused (checksum verified)", part.index)
                on_result(done)
            else:
                yield part

    engine.load()(todo(), WorkerSpec(config, chash, control, out), on_result)
    if RETRIES:  # this process's (the driver's, and the local engine's) retries; Ray workers log their own
        log.warning("object store: retried %s (throttling or lost connections; see the warnings above)", dict(RETRIES))
    if config.dedup_enabled:  # after every partition, in the driver: the same at any worker count
        dedup.run_and_record(out, config, specs, results, shard_meta, tok)
    elif (out / DEDUP_NAME).is_file():  # of an earlier build in this directory
        (out / DEDUP_NAME).unlink()
    return _finalize(out, config, chash, tok_info, template_block, specs, results, started)


def _finalize(out: Path | RemotePath, config: BuildConfig, chash: str, tok_info, template_block: dict, specs, results,
              started) -> Manifest:
    indices = sorted(results)
    if indices != list(range(len(indices))):
        raise AssertionError(f"partitions missing from the build: got {indices}")  # a bug, not bad input
    # Merge quarantine parts in partition order.
    qdata = b"".join(quarantine_part_path(out, i).read_bytes() for i in indices)
    files = build_files(out)
    atomic_write_bytes(files.quarantine, qdata)
    # Remove files of an earlier, larger build in the same directory.
    keep = {Path(results[i].shard["path"]).name for i in indices}
    for f in files.shards.iterdir():
        if f.name not in keep:
            f.unlink()

    stats = PartitionStats()
    for i in indices:
        stats.merge(results[i].stats)
    sources = []
    for spec in specs:
        s = stats.sources.get(spec.name) or PartitionStats().source(spec.name)
        sources.append(SourceEntry(**spec.to_json(), **s.to_counts().model_dump()))  # checks the accounting
    totals = Totals.of(sources)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        parsit_version=__version__,
        config=config.output_config(),
        config_hash=chash,
        tokenizer=TokenizerEntry(**tok_info.to_json()),
        template=template_block,
        image_token_index=IMAGE_TOKEN_INDEX,
        ignore_index=IGNORE_INDEX,
        vision=VisionEntry(**config.geometry.to_json()),
        video=VideoEntry(**video.to_json()) if (video := config.video_spec) is not None else None,
        sources=sources,
        totals=totals,
        shards=[ShardEntry(**results[i].shard) for i in indices],
    )  # the contract, accounting included, is validated here: a failure is a bug
    write_report(out, manifest, stats)
    finished = time.time()
    manifest.timing = Timing(
        started_at=datetime.fromtimestamp(started, timezone.utc).isoformat(),
        finished_at=datetime.fromtimestamp(finished, timezone.utc).isoformat(),
        seconds=round(finished - started, 3),
    )
    write_manifest(out, manifest)
    return manifest
