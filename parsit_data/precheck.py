"""``parsit-data validate``: every check that needs no tokenization, over whole inputs, no shards.

A fast first pass over a dataset before a build: the same driver that marks duplicate ids
(:func:`parsit_data.partition.iter_partitions`), the same per-record checks (:func:`parsit_data.validate.check_item`),
the same template rendering and the same quarantine lines (:func:`parsit_data.quarantine.quarantine_line`)
as the build, so a record
that passes here fails a build only for what needs tokens (``overlong``). The tokenizer, when given, is
used only for its list of special tokens (``special_token_in_text``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from parsit_data.images import ImageOptions, check_image_root
from parsit_data.partition import iter_partitions
from parsit_data.quarantine import quarantine_line
from parsit_data.records import Reject
from parsit_data.sources import SourceSpec, expand_inputs
from parsit_data.stats import PartitionStats
from parsit_data.validate import ValidationOptions, check_item, sample_id_of

log = logging.getLogger(__name__)

_CHUNK = 4096  # records held in memory at once


@dataclass
class PrecheckResult:
    specs: list[SourceSpec]
    stats: PartitionStats
    seconds: float
    quarantine_path: Path | None = None
    #: Images checked (opened), for throughput numbers.
    images: int = 0

    @property
    def read(self) -> int:
        return sum(s.read for s in self.stats.sources.values())

    @property
    def rejected(self) -> int:
        return sum(sum(s.quarantined.values()) for s in self.stats.sources.values())


def precheck(inputs: list[str | Path], *, vopts: ValidationOptions, iopts: ImageOptions, template=None,
             label_policy: str = "native", system_prompt: str | None = None,
             quarantine_out: str | Path | None = None, seed: int = 0) -> PrecheckResult:
    """Check every record of ``inputs``; write rejected ones to ``quarantine_out`` when given.

    With a ``template``, each record is also rendered as the build renders it (``template_mismatch``).

    Raises :class:`ParsitError` for usage problems (missing input, image root not a directory).
    """
    if iopts.root is not None:
        check_image_root(iopts.root)
    t0 = time.perf_counter()
    specs = expand_inputs(list(inputs), seed)
    stats = PartitionStats()
    for spec in specs:
        stats.source(spec.name)  # a source with no records still shows up
    n_images = 0
    qfile = None
    tmp = None
    if quarantine_out is not None:
        qpath = Path(quarantine_out)
        qpath.parent.mkdir(parents=True, exist_ok=True)
        tmp = qpath.with_name(qpath.name + ".tmp")
        qfile = open(tmp, "w", encoding="utf-8")
    try:
        for part in iter_partitions(specs, _CHUNK):  # the build's partitioning: duplicate ids
            sstats = stats.source(part.source)
            for item in part.records():
                sstats.read += 1
                try:
                    record, images, notes = check_item(item, vopts, iopts, load=False)
                    if template is not None:
                        template.render(record, system_prompt, label_policy)  # may Reject, as in the build
                except Reject as r:
                    sstats.quarantined[r.rejection.reason] += 1
                    if qfile is not None:
                        sid = sample_id_of(item.value, item.source, item.position) if item.value is not None else None
                        qfile.write(quarantine_line(item, sid, r.rejection) + "\n")
                    continue
                sstats.kept += 1
                sstats.images += len(images)
                n_images += len(images)
                if "placeholder_inserted" in notes:
                    sstats.placeholder_inserted += 1
        if qfile is not None:
            qfile.close()
            os.replace(tmp, quarantine_out)
            qfile = None
    finally:
        if qfile is not None:
            qfile.close()
            tmp.unlink(missing_ok=True)
    return PrecheckResult(specs, stats, time.perf_counter() - t0,
                          Path(quarantine_out) if quarantine_out is not None else None, n_images)
