"""Per-partition statistics, merged centrally: the report costs no second pass over the data.

Everything here is a count or a fixed-bin histogram, so merging is addition and the merged result
does not depend on how records were partitioned or which engine ran them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class SourceStats:
    read: int = 0
    kept: int = 0
    quarantined: Counter = field(default_factory=Counter)
    truncated: int = 0
    placeholder_inserted: int = 0
    tokens: int = 0  # multimodal tokens of kept rows
    text_tokens: int = 0
    supervised_tokens: int = 0
    images: int = 0

    def merge(self, other: "SourceStats") -> None:
        self.read += other.read
        self.kept += other.kept
        self.quarantined.update(other.quarantined)
        self.truncated += other.truncated
        self.placeholder_inserted += other.placeholder_inserted
        self.tokens += other.tokens
        self.text_tokens += other.text_tokens
        self.supervised_tokens += other.supervised_tokens
        self.images += other.images

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["quarantined"] = dict(sorted(self.quarantined.items()))
        return d

    @classmethod
    def from_json(cls, d: dict) -> "SourceStats":
        d = dict(d)
        d["quarantined"] = Counter(d.get("quarantined", {}))
        return cls(**d)


@dataclass
class PartitionStats:
    """Statistics of one partition, keyed by source name."""

    sources: dict[str, SourceStats] = field(default_factory=dict)

    def source(self, name: str) -> SourceStats:
        s = self.sources.get(name)
        if s is None:
            s = self.sources[name] = SourceStats()
        return s

    def merge(self, other: "PartitionStats") -> None:
        for name, s in other.sources.items():
            self.source(name).merge(s)

    def to_json(self) -> dict:
        return {"sources": {k: v.to_json() for k, v in self.sources.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "PartitionStats":
        return cls({k: SourceStats.from_json(v) for k, v in d.get("sources", {}).items()})
