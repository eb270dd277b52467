"""Progress of a long build: records/s, kept/quarantined so far, and an ETA when the total is cheap to know.

The total is counted before the build only where that is cheap, by the sources' own readers and sampling
rule (:func:`parsit_data.sources.estimate_total`): JSONL by a scan of its lines without parsing (about a
second per GB), Parquet from its footers, Arrow from its batch headers. A JSON list or tar shards would
need a full read to count, so a build with one shows no ETA (records/s only).
Partitions reused from an earlier run count as done but not in the rate (they cost nothing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from parsit_data.sources import SourceSpec, estimate_total


@dataclass
class BuildProgress:
    """Running counts of a build, fed one partition result at a time (engines call back in any order)."""

    total: int | None = None
    partitions: int = 0
    reused: int = 0
    kept: int = 0
    quarantined: int = 0
    processed: int = 0  # records of partitions processed in this run (not reused)
    started: float = field(default_factory=time.monotonic)

    def start(self, specs: list[SourceSpec]) -> None:
        self.total = estimate_total(specs)
        self.started = time.monotonic()

    def update(self, result) -> None:
        n = result.shard["rows"] + result.quarantined
        self.partitions += 1
        self.kept += result.shard["rows"]
        self.quarantined += result.quarantined
        if result.reused:
            self.reused += 1
        else:
            self.processed += n

    @property
    def records(self) -> int:
        return self.kept + self.quarantined

    def rate(self, now: float | None = None) -> float:
        elapsed = (now if now is not None else time.monotonic()) - self.started
        return self.processed / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self, now: float | None = None) -> float | None:
        if self.total is None:
            return None
        rate = self.rate(now)
        left = max(self.total - self.records, 0)
        if left == 0:
            return 0.0
        return left / rate if rate > 0 else None

    def line(self, now: float | None = None) -> str:
        done = f"{self.records:,}" + (f"/{self.total:,}" if self.total is not None else "")
        parts = [f"{done} records ({self.kept:,} kept, {self.quarantined:,} quarantined)",
                 f"{self.rate(now):,.0f} records/s", f"{self.partitions} partitions"]
        if self.reused:
            parts[-1] += f" ({self.reused} reused)"
        eta = self.eta_seconds(now)
        if eta is not None:
            parts.append(f"ETA {_fmt(eta)}")
        return ", ".join(parts)


def _fmt(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
