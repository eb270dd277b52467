"""Per-partition statistics, merged centrally: the report costs no second pass over the data.

Two kinds of statistics live here:

* :class:`SourceStats`: the counters the manifest carries (read / kept / quarantined by reason ...).
* :class:`SourceDists`: what the data quality report needs beyond counters: fixed-bin histograms of
  per-row values, one example per quarantine reason, one rendered example with its supervised parts
  marked, and 8-byte content digests for exact-duplicate detection.

Everything merges by addition (histogram bins are fixed, so a merged histogram does not depend on how
records were partitioned or which engine ran them) or by "first in partition order wins" (examples),
and partitions are merged in index order, which is input order. So a Ray build and a local build,
or a build with another ``--shard-rows``, give the same merged statistics.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from parsit_data.decode import marked_spans, tokenizer_decode
from parsit_data.format import SourceCounts

# ---------------------------------------------------------------------------------------------------
# Fixed-bin histograms
# ---------------------------------------------------------------------------------------------------

#: ``int``: integer values >= 0 in log-linear bins (as HDR histograms do): every value below 128 has
#: its own bin (exact); above, each power of two is cut into 64 equal bins, so a bin is at most 1/64
#: (1.6 %) of its values wide. ``share``: values in [0, 1] in 100 bins of 0.01.
INT_EXACT_BELOW = 128
INT_SUB_BINS = 64
SHARE_BINS = 100


def bin_indices(scheme: str, values) -> np.ndarray:
    """The one binning function: the bin index (int64) of each value in ``scheme`` (``int`` or ``share``).

    ``int``: values below 128 are their own bin; above, the top 7 bits of the value (a mantissa in
    [64, 127]) and its power of two pick the bin. ``share``: 100 equal bins over [0, 1], clamped.
    """
    if scheme == "int":
        v = np.maximum(np.asarray(values, dtype=np.int64), 0)
        bits = np.frexp(v.astype(np.float64))[1]  # exact bit_length for |v| < 2**53
        shift = np.maximum(bits - 7, 1)
        return np.where(v < INT_EXACT_BELOW, v, INT_EXACT_BELOW + (shift - 1) * INT_SUB_BINS
                        + (np.right_shift(v, shift) - INT_SUB_BINS))
    if scheme == "share":
        return np.clip((np.asarray(values, dtype=np.float64) * SHARE_BINS).astype(np.int64), 0, SHARE_BINS - 1)
    raise ValueError(f"unknown histogram scheme {scheme!r}")


def int_bin(v: int) -> int:
    """Bin index of a non-negative integer in the ``int`` scheme."""
    return int(bin_indices("int", [v])[0])


def int_bin_range(idx: int) -> tuple[int, int]:
    """Inclusive [lo, hi] of the values in bin ``idx`` of the ``int`` scheme."""
    if idx < INT_EXACT_BELOW:
        return idx, idx
    shift = (idx - INT_EXACT_BELOW) // INT_SUB_BINS + 1
    m = (idx - INT_EXACT_BELOW) % INT_SUB_BINS + INT_SUB_BINS
    return m << shift, ((m + 1) << shift) - 1


def share_bin(x: float) -> int:
    return int(bin_indices("share", [x])[0])


def share_bin_range(idx: int) -> tuple[float, float]:
    return idx / SHARE_BINS, (idx + 1) / SHARE_BINS


@dataclass
class Histogram:
    """A sparse fixed-bin histogram with exact count, sum, min and max."""

    scheme: str = "int"
    counts: Counter = field(default_factory=Counter)  # bin index -> count
    n: int = 0
    total: float = 0
    min: float | None = None
    max: float | None = None

    def add(self, v: float) -> None:
        self.add_many([v])

    def add_many(self, values: list) -> None:
        """Count every value (binned by :func:`bin_indices`); count, sum, min and max are exact."""
        if not len(values):
            return
        keys, counts = np.unique(bin_indices(self.scheme, values), return_counts=True)
        self.counts.update(dict(zip(keys.tolist(), counts.tolist())))
        self.n += len(values)
        self.total = sum(values, self.total)  # in order, as repeated add() would
        lo, hi = min(values), max(values)
        self.min = lo if self.min is None or lo < self.min else self.min
        self.max = hi if self.max is None or hi > self.max else self.max

    def merge(self, other: "Histogram") -> None:
        if other.scheme != self.scheme:
            raise ValueError(f"cannot merge a {other.scheme} histogram into a {self.scheme} one")
        self.counts.update(other.counts)
        self.n += other.n
        self.total += other.total
        for v in (other.min, other.max):
            if v is not None:
                self.min = v if self.min is None or v < self.min else self.min
                self.max = v if self.max is None or v > self.max else self.max

    def bin_range(self, idx: int) -> tuple[float, float]:
        return int_bin_range(idx) if self.scheme == "int" else share_bin_range(idx)

    def bins(self) -> list[tuple[float, float, int]]:
        """``(lo, hi, count)`` of every non-empty bin, ascending (``hi`` inclusive for ``int``)."""
        return [(*self.bin_range(i), self.counts[i]) for i in sorted(self.counts) if self.counts[i]]

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile: the upper edge of the bin that holds it, clamped to [min, max].

        Exact for ``int`` values below 128; otherwise at most one bin (1/64 of the value) above the
        true quantile, never below it. For ``share``, within 0.01 above.
        """
        if self.n == 0:
            return None
        rank = max(1, int(np.ceil(q * self.n)))
        seen = 0
        for lo, hi, c in self.bins():
            seen += c
            if seen >= rank:
                return min(max(hi, self.min), self.max)
        return self.max

    def count_at_most(self, v: float) -> int:
        """Rows whose value is <= v, exact when v is a bin's upper edge (any ``int`` v below 128)."""
        return sum(c for lo, hi, c in self.bins() if hi <= v)

    def to_json(self) -> dict:
        return {"scheme": self.scheme, "counts": {str(k): v for k, v in sorted(self.counts.items()) if v},
                "n": self.n, "sum": self.total, "min": self.min, "max": self.max}

    @classmethod
    def from_json(cls, d: dict) -> "Histogram":
        return cls(d["scheme"], Counter({int(k): v for k, v in d["counts"].items()}), d["n"], d["sum"],
                   d["min"], d["max"])


#: The per-row values the report shows, and their scheme. ``per image`` ones count images, not rows.
ROW_METRICS: dict[str, str] = {
    "length": "int",  # multimodal length: text tokens - placeholders + visual tokens
    "text_tokens": "int",  # len(input_ids), placeholders included
    "supervised_tokens": "int",
    "supervised_share": "share",  # supervised / text tokens
    "turns": "int",
    "images": "int",  # images per sample
    "image_width": "int",  # per image, original size
    "image_height": "int",
    "image_tokens": "int",  # visual tokens per image
    "image_crops": "int",  # crops the vision tower encodes per image (base + anyres grid)
}

#: Per-clip values of the report's video section, one value per kept video. Integers, so durations and
#: frame rates are kept in milli-seconds and centi-frames per second (the report shows s and frames/s).
#: A source only carries them once it has a video row: a build without video reports as before.
VIDEO_METRICS: dict[str, str] = {
    "video_duration_ms": "int",  # the source clip's duration (video_info.duration_s)
    "video_fps_centi": "int",  # the source clip's average frame rate x 100 (video_info.fps)
    "video_width": "int",  # the source clip's size
    "video_height": "int",
    "video_source_frames": "int",  # frames in the source clip (video_info.frames)
    "video_frames": "int",  # frames sampled and stored per clip
    "video_tokens": "int",  # num_video_tokens
}


def video_values(cols: dict[str, list]) -> dict[str, list[int]] | None:
    """The :data:`VIDEO_METRICS` values of the rows of ``cols`` that carry a video, or None when none does
    (or the columns predate video: a format 1/2 shard)."""
    paths = cols.get("video_path")
    if not paths or all(p is None for p in paths):
        return None
    vals: dict[str, list[int]] = {k: [] for k in VIDEO_METRICS}
    for i, path in enumerate(paths):
        if path is None:
            continue
        info = cols["video_info"][i] or {}
        vals["video_duration_ms"].append(round(float(info.get("duration_s") or 0) * 1000))
        vals["video_fps_centi"].append(round(float(info.get("fps") or 0) * 100))
        vals["video_width"].append(int(info.get("width") or 0))
        vals["video_height"].append(int(info.get("height") or 0))
        vals["video_source_frames"].append(int(info.get("frames") or 0))
        vals["video_frames"].append(len(cols["video_frame_indices"][i]))
        vals["video_tokens"].append(int(cols["num_video_tokens"][i]))
    return vals


#: How many of the images with the most visual tokens the report lists.
TOP_IMAGES = 10


def _top_key(im: dict) -> tuple:
    return (-im["tokens"], im.get("source", ""), im["sample_id"], im["image"])


def top_images(images: list[dict], n: int = TOP_IMAGES) -> list[dict]:
    """The ``n`` images with the most visual tokens (ties by source, sample id, image index: deterministic)."""
    return sorted(images, key=_top_key)[:n]


# ---------------------------------------------------------------------------------------------------
# Report statistics of one source
# ---------------------------------------------------------------------------------------------------

MAX_DETAIL = 400


def content_digest(input_ids, images) -> int:
    """8-byte digest of a row's content: its ``input_ids`` and its image bytes (length-prefixed); a video
    row passes its sampled frames after its images."""
    h = hashlib.blake2b(digest_size=8)
    h.update(np.asarray(input_ids, dtype="<i4").tobytes())
    for im in images:
        b = im if isinstance(im, bytes | bytearray) else str(im).encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return int.from_bytes(h.digest(), "little")


@dataclass
class SourceDists:
    """Distributions and examples of one source (merged in partition order)."""

    hists: dict[str, Histogram] = field(default_factory=lambda: {k: Histogram(s) for k, s in ROW_METRICS.items()})
    #: Image (width, height) pairs in coarse 2-D bins: "wbin,hbin" -> count (``int`` scheme bins).
    image_sizes: Counter = field(default_factory=Counter)
    #: reason -> first example {"sample_id", "line", "index", "detail"}
    reason_examples: dict[str, dict] = field(default_factory=dict)
    #: One row rendered with its supervised parts marked: {"sample_id", "spans", "images", "score"}.
    example: dict | None = None
    #: (partition index, base64 of little-endian uint64 digests of its rows, in row order)
    digests: list[tuple[int, str]] = field(default_factory=list)
    #: The images with the most visual tokens: {"sample_id", "image", "path", "width", "height", "tokens",
    #: "grid" [rows, cols], "crops", "row_length"}
    top_images: list[dict] = field(default_factory=list)
    #: :data:`VIDEO_METRICS` histograms, empty until the source has a kept video row.
    video_hists: dict[str, Histogram] = field(default_factory=dict)
    #: Source clip (width, height) in 2-D bins, as ``image_sizes``.
    video_sizes: Counter = field(default_factory=Counter)

    def merge(self, other: "SourceDists") -> None:
        for k, h in other.hists.items():
            self.hists.setdefault(k, Histogram(h.scheme)).merge(h)
        self.image_sizes.update(other.image_sizes)
        for k, h in other.video_hists.items():
            self.video_hists.setdefault(k, Histogram(h.scheme)).merge(h)
        self.video_sizes.update(other.video_sizes)
        for r, ex in other.reason_examples.items():
            self.reason_examples.setdefault(r, ex)
        if other.example is not None and (self.example is None or other.example["score"] > self.example["score"]):
            self.example = other.example
        self.digests.extend(other.digests)
        self.top_images = top_images(self.top_images + other.top_images)

    def digest_array(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(digests, partition index, row in partition) of every kept row."""
        parts, rows, ds = [], [], []
        for p, b64 in self.digests:
            d = np.frombuffer(base64.b64decode(b64), dtype="<u8")
            ds.append(d)
            parts.append(np.full(len(d), p, dtype=np.int64))
            rows.append(np.arange(len(d), dtype=np.int64))
        if not ds:
            e = np.zeros(0, dtype=np.int64)
            return np.zeros(0, dtype="<u8"), e, e
        return np.concatenate(ds), np.concatenate(parts), np.concatenate(rows)

    def to_json(self) -> dict:
        d = {
            "hists": {k: h.to_json() for k, h in self.hists.items()},
            "image_sizes": dict(sorted(self.image_sizes.items())),
            "reason_examples": dict(sorted(self.reason_examples.items())),
            "example": self.example,
            "digests": [list(x) for x in self.digests],
            "top_images": self.top_images,
        }
        if self.video_hists:  # only a source with video rows: part files of other builds stay as they were
            d["video_hists"] = {k: h.to_json() for k, h in self.video_hists.items()}
            d["video_sizes"] = dict(sorted(self.video_sizes.items()))
        return d

    @classmethod
    def from_json(cls, d: dict) -> "SourceDists":
        s = cls()
        for k, h in d.get("hists", {}).items():
            s.hists[k] = Histogram.from_json(h)
        s.image_sizes = Counter(d.get("image_sizes", {}))
        s.reason_examples = dict(d.get("reason_examples", {}))
        s.example = d.get("example")
        s.digests = [(int(p), b) for p, b in d.get("digests", [])]
        s.top_images = list(d.get("top_images", []))
        s.video_hists = {k: Histogram.from_json(h) for k, h in d.get("video_hists", {}).items()}
        s.video_sizes = Counter(d.get("video_sizes", {}))
        return s


# ---------------------------------------------------------------------------------------------------
# Manifest counters
# ---------------------------------------------------------------------------------------------------


@dataclass
class SourceStats:
    """The counters of :class:`parsit_data.format.SourceCounts` while a partition is counted.

    A plain dataclass because the pipeline increments it per record (about 6x cheaper than setting a
    pydantic field); its fields are SourceCounts' (tests/data/test_report_stats.py checks) and
    :meth:`to_counts` is the typed, validated form the manifest and the report use.
    """

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

    def to_counts(self) -> SourceCounts:
        return SourceCounts(**self.to_json())


@dataclass
class PartitionStats:
    """Statistics of one partition (or of a whole merged build), keyed by source name."""

    sources: dict[str, SourceStats] = field(default_factory=dict)
    dists: dict[str, SourceDists] = field(default_factory=dict)

    def source(self, name: str) -> SourceStats:
        s = self.sources.get(name)
        if s is None:
            s = self.sources[name] = SourceStats()
        return s

    def dist(self, name: str) -> SourceDists:
        d = self.dists.get(name)
        if d is None:
            d = self.dists[name] = SourceDists()
        return d

    def merge(self, other: "PartitionStats") -> None:
        for name, s in other.sources.items():
            self.source(name).merge(s)
        for name, d in other.dists.items():
            self.dist(name).merge(d)

    def observe_partition(self, index: int, source: str, cols: dict[str, list], quarantine_lines: list[str],
                          tokenizer=None, geometry=None) -> None:
        """Record the report's statistics of one finished partition: its shard columns and its
        quarantine lines (JSON of :class:`~parsit_data.records.QuarantineRecord`). One call per partition,
        after the rows are final, so what is counted is exactly what was written. ``tokenizer`` (a
        ``tokenizers.Tokenizer``) decodes the example row; without it no example is kept. ``geometry``
        (the build's :class:`~parsit_data.format.VisionGeometry`) gives each image's crop grid."""
        d = self.dist(source)
        h = d.hists
        digests = np.zeros(len(cols["input_ids"]), dtype="<u8")
        n_text = [len(ids) for ids in cols["input_ids"]]
        h["length"].add_many(cols["length"])
        h["text_tokens"].add_many(n_text)
        h["supervised_tokens"].add_many(cols["supervised_tokens"])
        h["supervised_share"].add_many([s / n if n else 0.0 for s, n in zip(cols["supervised_tokens"], n_text)])
        h["turns"].add_many(cols["num_turns"])
        h["images"].add_many([len(x) for x in cols["images"]])
        widths = [int(s["width"]) for sizes in cols["image_sizes"] for s in sizes]
        heights = [int(s["height"]) for sizes in cols["image_sizes"] for s in sizes]
        h["image_width"].add_many(widths)
        h["image_height"].add_many(heights)
        h["image_tokens"].add_many([vt for row in cols["num_image_tokens"] for vt in row])
        if geometry is not None:
            self._observe_crops(d, cols, geometry)
        self._observe_videos(d, cols)
        d.image_sizes.update(f"{w},{ht}" for w, ht in zip(bin_indices("int", widths).tolist(),
                                                         bin_indices("int", heights).tolist()))
        frames = cols.get("video_frames")  # a video row's content is its sampled frames too
        for i, ids in enumerate(cols["input_ids"]):
            sup = cols["supervised_tokens"][i]
            digests[i] = content_digest(ids, cols["images"][i] + (frames[i] if frames else []))
            if tokenizer is not None:
                # Prefer a row with an image (or a video), then one with several rounds, then any supervised one.
                visual = bool(cols["images"][i]) or bool(frames and frames[i])
                score = 4 * visual + 2 * (cols["num_turns"][i] >= 4) + bool(sup)
                if d.example is None or score > d.example["score"]:
                    d.example = {"sample_id": cols["sample_id"][i], "score": score,
                                 "images": len(cols["images"][i]), "length": cols["length"][i],
                                 "spans": marked_spans(ids, cols["labels"][i], tokenizer_decode(tokenizer))}
        d.digests.append((index, base64.b64encode(digests.tobytes()).decode("ascii")))
        for line in quarantine_lines:
            q = json.loads(line)
            if q["reason"] not in d.reason_examples:
                detail = q.get("detail") or ""
                d.reason_examples[q["reason"]] = {
                    "sample_id": q.get("sample_id"), "line": q.get("line"), "index": q.get("index"),
                    "detail": detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL] + "...",
                }

    @staticmethod
    def _observe_crops(d: SourceDists, cols: dict[str, list], geometry) -> None:
        """Crops per image, and the partition's images with the most visual tokens."""
        crops, candidates = [], []
        for i, sizes in enumerate(cols["image_sizes"]):
            for j, size in enumerate(sizes):
                w, h = int(size["width"]), int(size["height"])
                grid = geometry.grid_for(w, h, len(sizes))
                crops.append(1 + grid[0] * grid[1])
                candidates.append({"sample_id": cols["sample_id"][i], "image": j, "path": cols["image_paths"][i][j],
                                   "width": w, "height": h, "tokens": int(cols["num_image_tokens"][i][j]),
                                   "grid": list(grid), "crops": crops[-1], "row_length": int(cols["length"][i])})
        d.hists["image_crops"].add_many(crops)
        d.top_images = top_images(d.top_images + candidates)

    @staticmethod
    def _observe_videos(d: SourceDists, cols: dict[str, list]) -> None:
        """The video section's per-clip values of the partition's kept video rows (none: nothing added)."""
        vals = video_values(cols)
        if vals is None:
            return
        for k, scheme in VIDEO_METRICS.items():
            d.video_hists.setdefault(k, Histogram(scheme)).add_many(vals[k])
        wb, hb = bin_indices("int", vals["video_width"]).tolist(), bin_indices("int", vals["video_height"]).tolist()
        d.video_sizes.update(f"{w},{h}" for w, h in zip(wb, hb))

    def to_json(self) -> dict:
        return {"sources": {k: v.to_json() for k, v in self.sources.items()},
                "dists": {k: v.to_json() for k, v in self.dists.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "PartitionStats":
        return cls({k: SourceStats.from_json(v) for k, v in d.get("sources", {}).items()},
                   {k: SourceDists.from_json(v) for k, v in d.get("dists", {}).items()})
