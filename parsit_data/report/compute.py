"""Manifest + merged per-partition statistics -> :class:`Report`. No pass over the shards.

The only shard access is a lookup of the ``sample_id`` of at most a few rows, to name the members of
the first duplicate groups (skipped when the shards are gone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parsit_data.format import Manifest, build_files, shard_batches
from parsit_data.format.fsio import location
from parsit_data.errors import ParsitError
from parsit_data.reasons import explain
from parsit_data.stats import (ROW_METRICS, VIDEO_METRICS, Histogram, PartitionStats, SourceDists, int_bin_range,
                               top_images)
from parsit_data.report.model import (Bin, Check, Distribution, DuplicateGroup, Duplicates, MaskedExample,
                                      MixtureRow, Quantiles, ReasonExample, ReasonRow, Report, SizeBin,
                                      SourceReport, Summary, TemplateReport, TopImage, VideoReport)

log = logging.getLogger(__name__)

LABELS = {
    "length": ("multimodal length (tokens)", "row"),
    "text_tokens": ("text tokens (input_ids)", "row"),
    "supervised_tokens": ("supervised tokens", "row"),
    "supervised_share": ("supervised share of text tokens", "row"),
    "turns": ("turns per sample", "row"),
    "images": ("images per sample", "row"),
    "image_width": ("image width (px, original)", "image"),
    "image_height": ("image height (px, original)", "image"),
    "image_tokens": ("visual tokens per image", "image"),
    "image_crops": ("crops per image (base + anyres grid)", "image"),
    "video_duration_ms": ("source clip duration (ms)", "video"),
    "video_fps_centi": ("source frame rate (frames/s x 100)", "video"),
    "video_width": ("source clip width (px)", "video"),
    "video_height": ("source clip height (px)", "video"),
    "video_source_frames": ("frames in the source clip", "video"),
    "video_frames": ("frames sampled per clip", "video"),
    "video_tokens": ("video tokens per clip", "video"),
}

#: The prefix of every video quarantine reason (parsit_data.reasons): "videos rejected by reason".
VIDEO_REASON_PREFIX = "video_"

PRECISION = (
    "Quantiles are nearest-rank, read from fixed-bin histograms merged over partitions: integer values "
    "below 128 have one bin each (exact); above, each power of two is cut into 64 bins and the upper edge "
    "of the bin is shown (at most 1/64 = 1.6% above the true value, never below). Shares use 100 bins "
    "of 0.01. Count, mean, min and max are exact."
)

#: Keys under which a template's own mask-report example may appear in the manifest's template block.
MANIFEST_EXAMPLE_KEYS = ("mask_report", "example", "mask_example")


@dataclass(frozen=True)
class Thresholds:
    """Where a signal turns from ok to warn to fail (shares are fractions; mixture in share points)."""

    quarantine_warn: float = 0.01
    quarantine_fail: float = 0.20
    truncated_warn: float = 0.01
    truncated_fail: float = 0.10
    duplicates_warn: float = 0.0
    duplicates_fail: float = 0.05
    mixture_warn: float = 0.02
    mixture_fail: float = 0.10


def distribution(metric: str, h: Histogram) -> Distribution:
    label, unit = LABELS.get(metric, (metric, "row"))
    q = Quantiles(n=h.n, mean=round(h.total / h.n, 4) if h.n else None, min=h.min, p50=h.quantile(0.5),
                  p90=h.quantile(0.9), p99=h.quantile(0.99), max=h.max)
    bins = [Bin(lo=lo, hi=hi, count=c) for lo, hi, c in h.bins()]
    return Distribution(metric=metric, label=label, unit=unit, scheme=h.scheme, quantiles=q, bins=bins)


def _size_bins(counter) -> list[SizeBin]:
    out = []
    for key, c in sorted(counter.items(), key=lambda kv: tuple(map(int, kv[0].split(",")))):
        wi, hi = map(int, key.split(","))
        (wl, wh), (hl, hh) = int_bin_range(wi), int_bin_range(hi)
        out.append(SizeBin(width_lo=wl, width_hi=wh, height_lo=hl, height_hi=hh, count=c))
    return out


def _rate(a: int, b: int) -> float:
    return round(a / b, 6) if b else 0.0


def _lookup_ids(out: Path | None, wanted: dict[tuple[int, int], str]) -> dict[tuple[int, int], str]:
    """sample_id of a few (partition, row) pairs, read from the shards' sample_id column only."""
    found: dict[tuple[int, int], str] = {}
    if out is None:
        return found
    for part in sorted({p for p, _ in wanted}):
        path = build_files(out).shard(part)
        rows = sorted(r for p, r in wanted if p == part)
        try:
            start = 0
            for batch in shard_batches(path):
                col = batch.column(batch.schema.get_field_index("sample_id"))
                for r in rows:
                    if start <= r < start + batch.num_rows:
                        found[(part, r)] = f"{wanted[(part, r)]}/{col[r - start].as_py()}"
                start += batch.num_rows
        except ParsitError as exc:  # shards moved away: keep partition:row
            log.info("cannot name duplicate rows from %s: %s", path, exc)
    return found


def _duplicates(dists: dict[str, SourceDists], out: Path | None) -> tuple[Duplicates, dict[str, int]]:
    """Exact duplicates by 8-byte content digest, over the whole build and within each source."""
    per_source: dict[str, int] = {}
    arrays = []
    for si, (name, d) in enumerate(dists.items()):
        dg, parts, rows = d.digest_array()
        per_source[name] = int(len(dg) - len(np.unique(dg)))
        arrays.append((dg, parts, rows, np.full(len(dg), si, dtype=np.int64)))
    names = list(dists)
    if arrays:
        dg, parts, rows, src = (np.concatenate(x) for x in zip(*arrays))
    else:
        dg = np.zeros(0, dtype="<u8")
        parts = rows = src = np.zeros(0, dtype=np.int64)
    uniq, inverse, counts = np.unique(dg, return_inverse=True, return_counts=True)
    dup_ids = np.nonzero(counts > 1)[0]
    big = np.iinfo(np.int64).max
    smin, smax = np.full(len(uniq), big, dtype=np.int64), np.full(len(uniq), -1, dtype=np.int64)
    np.minimum.at(smin, inverse, src)
    np.maximum.at(smax, inverse, src)
    cross = int(np.sum((counts > 1) & (smin != smax)))
    # Name the members of the first groups, in order of first appearance (partition, row).
    pos = np.empty(len(dg), dtype=np.int64)
    pos[np.lexsort((rows, parts))] = np.arange(len(dg))
    first = np.full(len(uniq), big, dtype=np.int64)
    np.minimum.at(first, inverse, pos)
    first_groups = [int(g) for g in dup_ids[np.argsort(first[dup_ids], kind="stable")][:5]]
    members = {g: sorted(np.nonzero(inverse == g)[0].tolist(), key=lambda i: pos[i])[:5] for g in first_groups}
    wanted = {(int(parts[i]), int(rows[i])): names[int(src[i])] for ms in members.values() for i in ms}
    ids = _lookup_ids(out, wanted)
    examples = [DuplicateGroup(digest=f"{int(uniq[g]):016x}", count=int(counts[g]),
                               samples=[ids.get((int(parts[i]), int(rows[i])),
                                                f"{names[int(src[i])]}/partition {int(parts[i])} row {int(rows[i])}")
                                        for i in members[g]]) for g in first_groups]
    dup = Duplicates(
        method="blake2b-64 of each kept row's input_ids (int32) and image bytes, kept per partition as 8-byte "
               "digests and merged; a false match needs a 64-bit collision (about n^2/2^65: 3e-6 at 10M rows)",
        rows=int(len(dg)), distinct=int(len(uniq)), duplicate_rows=int(len(dg) - len(uniq)),
        groups=int(len(dup_ids)), cross_source_groups=int(cross), examples=examples)
    return dup, per_source


def build_report(manifest: Manifest, stats: PartitionStats, out: Path | None = None,
                 thresholds: Thresholds = Thresholds()) -> Report:
    """The report of a build from its manifest and its merged statistics."""
    names = [s.name for s in manifest.sources]
    dists = {n: stats.dists.get(n) or SourceDists() for n in names}
    dup, dup_per_source = _duplicates(dists, out)

    has_video = any(d.video_hists for d in dists.values())
    metrics = {**ROW_METRICS, **(VIDEO_METRICS if has_video else {})}
    overall_h = {k: Histogram(s) for k, s in metrics.items()}
    overall_sizes, video_sizes = SourceDists().image_sizes, SourceDists().video_sizes
    sources: list[SourceReport] = []
    for s in manifest.sources:
        d = dists[s.name]
        hists = {**d.hists, **({k: d.video_hists.get(k) or Histogram(v) for k, v in VIDEO_METRICS.items()}
                               if has_video else {})}
        for k, h in hists.items():
            overall_h[k].merge(h)
        overall_sizes.update(d.image_sizes)
        video_sizes.update(d.video_sizes)
        q = sum(s.quarantined.values())
        sources.append(SourceReport(
            name=s.name, path=s.path, format=s.format, sampling=s.sampling,
            read=s.read, kept=s.kept, quarantined=q, quarantine_rate=_rate(q, s.read),
            quarantined_by_reason=dict(s.quarantined), truncated=s.truncated,
            overlong_dropped=s.quarantined.get("overlong", 0),
            placeholder_inserted=s.placeholder_inserted, tokens=s.tokens,
            text_tokens=s.text_tokens, supervised_tokens=s.supervised_tokens,
            images=s.images, duplicate_rows=dup_per_source.get(s.name, 0),
            distributions={k: distribution(k, h) for k, h in hists.items()},
            image_sizes=_size_bins(d.image_sizes)))

    top = top_images([{**im, "source": n} for n, d in dists.items() for im in d.top_images])
    reasons = _reasons(sources, dists)
    mixture = _mixture(sources)
    tot = {k: sum(getattr(s, k) for s in sources) for k in (
        "read", "kept", "quarantined", "truncated", "overlong_dropped", "tokens", "text_tokens",
        "supervised_tokens", "images")}
    zero_sup = overall_h["supervised_tokens"].count_at_most(0)
    max_length = manifest.config.get("max_length")
    summary = dict(
        sources=len(sources), **tot, quarantine_rate=_rate(tot["quarantined"], tot["read"]),
        over_max_length=tot["truncated"] + tot["overlong_dropped"], max_length=max_length,
        duplicate_rows=dup.duplicate_rows, zero_supervised_rows=zero_sup,
        shards=len(manifest.shards), shard_bytes=sum(x.bytes for x in manifest.shards))
    broken = [s.name for s in manifest.sources if s.accounting_error()]
    checks = _checks(summary, broken, mixture, overall_h["length"], thresholds)
    near = _near_duplicates(out, checks)
    verdict = "no-go" if any(c.status == "fail" for c in checks) else (
        "review" if any(c.status == "warn" for c in checks) else "go")

    tmpl = dict(manifest.template)
    examples = [MaskedExample(source=n, sample_id=d.example["sample_id"], images=d.example["images"],
                              length=d.example["length"], spans=d.example["spans"])
                for n, d in dists.items() if d.example]
    template = TemplateReport(
        name=str(tmpl.get("name", "")), label_policy=str(tmpl.get("label_policy", "")),
        system_prompt=tmpl.get("system_prompt"), details=tmpl, examples=examples,
        manifest_example=next((tmpl[k] for k in MANIFEST_EXAMPLE_KEYS if tmpl.get(k)), None))
    return Report(
        parsit_version=manifest.parsit_version, format_version=manifest.format_version,
        config_hash=manifest.config_hash, build=manifest.config,
        summary=Summary(verdict=verdict, **summary), checks=checks, sources=sources,
        overall={k: distribution(k, h) for k, h in overall_h.items()}, image_sizes=_size_bins(overall_sizes),
        top_images=[TopImage(**im) for im in top],
        reasons=reasons, duplicates=dup, mixture=mixture, template=template, near_duplicates=near,
        video=_video(manifest, overall_h, video_sizes, reasons),
        tokenizer=manifest.tokenizer.model_dump(mode="json"), vision=manifest.vision.model_dump(mode="json"),
        image_token_index=manifest.image_token_index, ignore_index=manifest.ignore_index,
        precision=PRECISION)


def _video(manifest: Manifest, overall: dict[str, Histogram], sizes, reasons: list[ReasonRow]) -> VideoReport | None:
    """The video section: kept clips from the ``video_*`` histograms, refused ones from the video reasons.
    None when the build kept no video and refused none (its report is what it was before video)."""
    rejected = {r.reason: r.count for r in reasons if r.reason.startswith(VIDEO_REASON_PREFIX)}
    if "video_frames" not in overall and not rejected:
        return None
    h = {k: overall.get(k) or Histogram(v) for k, v in VIDEO_METRICS.items()}
    sampling = getattr(manifest, "video", None)
    if hasattr(sampling, "model_dump"):
        sampling = sampling.model_dump(mode="json")
    return VideoReport(rows=h["video_frames"].n, frames=int(h["video_frames"].total),
                       tokens=int(h["video_tokens"].total), duration_s=round(h["video_duration_ms"].total / 1000, 3),
                       rejected=sum(rejected.values()), rejected_by_reason=rejected, sizes=_size_bins(sizes),
                       sampling=sampling)


def _reasons(sources: list[SourceReport], dists: dict[str, SourceDists]) -> list[ReasonRow]:
    """One row per reason, most frequent first; the example is the first in source order."""
    rows: dict[str, ReasonRow] = {}
    for s in sources:
        for reason, c in s.quarantined_by_reason.items():
            row = rows.get(reason)
            if row is None:
                row = rows[reason] = ReasonRow(reason=reason, help=explain(reason), count=0, by_source={}, example=None)
            row.count += c
            row.by_source[s.name] = c
            ex = dists[s.name].reason_examples.get(reason)
            if row.example is None and ex is not None:
                row.example = ReasonExample(source=s.name, **ex)
    return sorted(rows.values(), key=lambda r: (-r.count, r.reason))


def _mixture(sources: list[SourceReport]) -> list[MixtureRow]:
    read = sum(s.read for s in sources)
    kept = sum(s.kept for s in sources)
    tokens = sum(s.tokens for s in sources)
    sup = sum(s.supervised_tokens for s in sources)
    rows = []
    for s in sources:
        req, got = _rate(s.read, read), _rate(s.kept, kept)
        rows.append(MixtureRow(
            source=s.name, sampling=s.sampling, requested_samples=s.read, requested_share=req, kept_samples=s.kept,
            achieved_samples_share=got, tokens=s.tokens, achieved_tokens_share=_rate(s.tokens, tokens),
            supervised_tokens=s.supervised_tokens, achieved_supervised_share=_rate(s.supervised_tokens, sup),
            delta_samples_share=round(got - req, 6)))
    return rows


def _level(value: float, warn: float, fail: float) -> str:
    return "fail" if value > fail else "warn" if value > warn else "ok"


def _near_duplicates(out, checks: list[Check]) -> dict | None:
    """The global pass's section (DIR/dedup.json) and its checks: contamination asks for a review."""
    if out is None:
        return None
    from parsit_data.dedup import load_section

    d = load_section(location(out))
    if d is None:
        return None
    checks.append(Check(name="near duplicates", status="ok", value=f"{d['near_duplicate_rows']:,} near copies "
                        f"({d['rate']:.1%}), action {d['action']}",
                        message="later near copies of a sample (images and text); see the near-duplicates section"))
    c = d.get("contamination")
    if c is not None:
        checks.append(Check(name="benchmark contamination", status="warn" if c["rows"] else "ok",
                            value=f"{c['rows']:,} rows leak an eval item, action {c['action']}",
                            message="training rows whose image or question is a near copy of an --eval-set item "
                                    "inflate that benchmark's scores"))
    return d


def _checks(summary: dict, broken: list[str], mixture: list[MixtureRow], length: Histogram,
            t: Thresholds) -> list[Check]:
    checks = []
    kept, read = summary["kept"], summary["read"]
    checks.append(Check(name="rows kept", status="ok" if kept else "fail", value=f"{kept:,} of {read:,}",
                        message="the build has rows to train on" if kept else
                        "nothing was kept: read the reasons table before anything else"))
    checks.append(Check(name="accounting (read = kept + quarantined)", status="fail" if broken else "ok",
                        value="holds for every source" if not broken else "broken for " + ", ".join(broken),
                        message="every record read is either a row or a quarantine line"))
    qr = summary["quarantine_rate"]
    checks.append(Check(name="quarantine rate", status=_level(qr, t.quarantine_warn, t.quarantine_fail),
                        value=f"{qr:.1%} ({summary['quarantined']:,})",
                        message=f"warn above {t.quarantine_warn:.0%}, fail above {t.quarantine_fail:.0%}: see the "
                                "reasons table; a single dominant reason usually means a wrong option "
                                "(--image-root, --max-length) rather than bad data"))
    z = summary["zero_supervised_rows"]
    checks.append(Check(name="rows with no supervised token", status="fail" if z else "ok", value=f"{z:,}",
                        message="a row whose labels are all -100 trains on nothing (the classic masking bug)"))
    tr = _rate(summary["truncated"], kept)
    checks.append(Check(name="truncated rows", status=_level(tr, t.truncated_warn, t.truncated_fail),
                        value=f"{tr:.1%} ({summary['truncated']:,}); dropped as overlong: "
                              f"{summary['overlong_dropped']:,}",
                        message="rows cut at a turn boundary to fit --max-length lose their later turns"))
    ml = summary["max_length"]
    if ml is not None:
        over = length.max is not None and length.max > ml
        checks.append(Check(name="lengths within --max-length", status="fail" if over else "ok",
                            value=f"max {length.max} vs --max-length {ml}",
                            message="a kept row longer than --max-length would be a build bug"))
    dr = _rate(summary["duplicate_rows"], kept)
    checks.append(Check(name="exact duplicates", status=_level(dr, t.duplicates_warn, t.duplicates_fail),
                        value=f"{summary['duplicate_rows']:,} extra copies ({dr:.1%})",
                        message="identical input_ids and images: repeated samples are trained on more than once"))
    if len(mixture) > 1:
        worst = max(mixture, key=lambda m: abs(m.delta_samples_share))
        d = abs(worst.delta_samples_share)
        checks.append(Check(name="mixture vs requested", status=_level(d, t.mixture_warn, t.mixture_fail),
                            value=f"largest drift {worst.delta_samples_share * 100:+.1f} points ({worst.source})",
                            message="share of kept samples per source against the records each sampling "
                                    "strategy selected; quarantine shifts the mixture"))
    return checks
