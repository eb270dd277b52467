"""The data quality report of a build: ``report.json`` (the :class:`Report` model) and ``report.html``.

Both come from the manifest and the merged per-partition statistics: a build writes them at its end
(``parsit_data.build`` calls :func:`write_report`), and :func:`regenerate` rewrites them later from
``DIR/manifest.json`` and ``DIR/_parts/part-*.json`` without reading the shards again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from parsit_data.errors import ParsitError
from parsit_data.format import Manifest, atomic_write_bytes, build_files, open_build, part_path, read_part
from parsit_data.format.fsio import location
from parsit_data.report.compute import Thresholds, build_report
from parsit_data.report.model import Report
from parsit_data.stats import PartitionStats

log = logging.getLogger(__name__)

__all__ = ["Report", "Thresholds", "build_report", "load_stats", "regenerate", "render_html", "write_report"]


def render_html(report: Report, title: str = "") -> str:
    from parsit_data.report.html import render_html as _render

    return _render(report, title)


def write_report(out: Path, manifest: Manifest, stats: PartitionStats) -> Report:
    """Compute the report and write ``report.json`` and ``report.html`` into ``out`` (atomically)."""
    out = location(out)
    files = build_files(out)
    report = build_report(manifest, stats, out)
    dump = report.model_dump(mode="json")
    for section in ("near_duplicates", "video"):  # no global pass / no video: report.json as before them
        if dump.get(section) is None:
            dump.pop(section, None)
    data = json.dumps(dump, indent=1, ensure_ascii=False) + "\n"
    atomic_write_bytes(files.report_json, data.encode())
    atomic_write_bytes(files.report_html, render_html(report, str(out)).encode())
    log.info("report written to %s", files.report_html)
    return report


def load_stats(out: Path, manifest: Manifest) -> PartitionStats:
    """Merge the statistics the partitions of a finished build left in ``DIR/_parts``, in partition order."""
    stats = PartitionStats()
    for i, shard in enumerate(manifest.shards):
        pp = part_path(out, i)
        try:
            meta = read_part(out, i)
        except ParsitError as exc:
            raise ParsitError(f"{exc}: run the same `parsit-data build` again") from None
        if meta is None:
            raise ParsitError(f"{pp} is missing: the report is made from the per-partition statistics a build keeps "
                              "in _parts/; run the same `parsit-data build` again (it reuses the finished shards "
                              "and rewrites the report)")
        if meta.get("config_hash") != manifest.config_hash or meta["shard"].get("sha256") != shard.sha256:
            raise ParsitError(f"{pp} belongs to another build than {build_files(out).manifest}: run the same "
                              "`parsit-data build` again to bring them back in step")
        if "dists" not in meta.get("stats", {}):
            log.warning("%s was written by a Parsit without report statistics: distributions will be empty", pp)
        stats.merge(PartitionStats.from_json(meta["stats"]))
    return stats


def regenerate(out: Path) -> Report:
    """Rewrite ``report.json`` and ``report.html`` of a finished build, without rebuilding (nor the shards)."""
    out = location(out, "build")
    manifest = open_build(out, check_files=False).manifest
    return write_report(out, manifest, load_stats(out, manifest))
