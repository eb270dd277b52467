"""The mergeable statistics under the report: fixed bins, quantile precision, merge = whole."""

from __future__ import annotations

import numpy as np
import pytest

from parsit_data.decode import marked_spans
from parsit_data.stats import INT_EXACT_BELOW, Histogram, PartitionStats, content_digest, int_bin, int_bin_range


def test_int_bins_tile_the_integers_with_bounded_width():
    prev_hi = -1
    for idx in range(int_bin(2**31)):
        lo, hi = int_bin_range(idx)
        assert lo == prev_hi + 1  # contiguous, no overlap
        assert int_bin(lo) == idx and int_bin(hi) == idx
        if lo < INT_EXACT_BELOW:
            assert lo == hi
        else:
            assert (hi - lo + 1) / lo <= 1 / 64
        prev_hi = hi


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantiles_are_within_one_bin_above_and_merge_equals_whole(seed):
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.integers(0, 120, 300), rng.lognormal(7, 1.2, 3000).astype(int)])
    rng.shuffle(values)
    whole, a, b = Histogram(), Histogram(), Histogram()
    for i, v in enumerate(values):
        whole.add(int(v))
        (a if i % 3 else b).add(int(v))
    merged = Histogram.from_json(a.to_json())
    merged.merge(Histogram.from_json(b.to_json()))
    assert merged.to_json() == whole.to_json()
    for q in (0.5, 0.9, 0.99, 1.0):
        true = np.quantile(values, q, method="inverted_cdf")
        got = whole.quantile(q)
        assert true <= got <= max(true * (1 + 1 / 64), true), (q, true, got)
        if true < INT_EXACT_BELOW:
            assert got == true
    assert whole.quantile(1.0) == values.max() and whole.min == values.min() and whole.n == len(values)


def test_add_many_equals_one_add_per_value():
    rng = np.random.default_rng(3)
    edges = [v for k in range(7, 40) for v in (2**k - 1, 2**k, 2**k + 1)]  # where the bin width doubles
    ints = [0, 1, 127, 128, 129, -5, *edges, *rng.lognormal(8, 2, 2000).astype(int).tolist()]
    shares = [0.0, 1.0, 0.01, 0.0099999, 0.995, *rng.random(500).tolist(), *[s / n for s, n in zip(
        rng.integers(0, 50, 300).tolist(), rng.integers(50, 400, 300).tolist())]]
    for scheme, values in (("int", ints), ("share", shares)):
        one, many = Histogram(scheme), Histogram(scheme)
        for v in values:
            one.add(v)
        many.add_many(values[:7])
        many.add_many(values[7:])
        many.add_many([])
        assert many.to_json() == one.to_json(), scheme


def test_share_histogram_and_zero_count():
    h = Histogram("share")
    for x in (0.0, 0.0, 0.25, 0.5, 1.0):
        h.add(x)
    assert h.count_at_most(0.01) == 2 and h.quantile(1.0) == 1.0 and h.quantile(0.5) == pytest.approx(0.26)


def test_digest_covers_ids_and_image_bytes():
    assert content_digest([1, 2, 3], [b"img"]) == content_digest([1, 2, 3], [b"img"])
    assert content_digest([1, 2, 3], [b"img"]) != content_digest([1, 2, 3], [b"imh"])
    assert content_digest([1, 2, 3], []) != content_digest([1, 2, 4], [])
    assert content_digest([1], [b"ab", b"c"]) != content_digest([1], [b"a", b"bc"])  # length-prefixed


def test_marked_spans_follow_labels_and_show_placeholders():
    ids = [10, -200, 11, 12, 13]
    labels = [-100, -100, -100, 12, 13]
    spans = marked_spans(ids, labels, lambda x: "".join(f"[{t}]" for t in x))
    assert spans == [{"text": "[10]<image>[11]", "supervised": False}, {"text": "[12][13]", "supervised": True}]


def _cols(n, source="s", image=False):
    return {"sample_id": [f"{source}{i}" for i in range(n)], "input_ids": [[1, 2, 3, i] for i in range(n)],
            "labels": [[-100, -100, 3, i] for i in range(n)], "length": [4] * n, "supervised_tokens": [2] * n,
            "num_turns": [2] * n, "images": [[b"x"] if image else [] for _ in range(n)],
            "image_sizes": [[{"width": 10, "height": 20}] if image else [] for _ in range(n)],
            "num_image_tokens": [[1] if image else [] for _ in range(n)]}


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        assert skip_special_tokens is False  # control tokens must stay visible in the example
        return " ".join(map(str, ids))


def test_partition_merge_keeps_first_examples_and_prefers_rows_with_images():
    q1 = '{"source": "s", "line": 3, "index": null, "sample_id": "x", "reason": "empty_turn", "detail": "d1", "record": {}}'
    q2 = '{"source": "s", "line": 9, "index": null, "sample_id": "y", "reason": "empty_turn", "detail": "d2", "record": {}}'
    p0, p1 = PartitionStats(), PartitionStats()
    p0.observe_partition(0, "s", _cols(2), [q1], _Tok())
    p1.observe_partition(1, "s", _cols(2, image=True), [q2], _Tok())
    total = PartitionStats()
    for p in (p0, p1):
        total.merge(PartitionStats.from_json(p.to_json()))
    d = total.dists["s"]
    assert d.reason_examples["empty_turn"]["sample_id"] == "x"  # first in partition order
    assert d.example["sample_id"] == "s0" and d.example["images"] == 1  # a row with an image wins
    digests, parts, rows = d.digest_array()
    assert list(parts) == [0, 0, 1, 1] and list(rows) == [0, 1, 0, 1]
    assert len(set(digests.tolist())) == 4
    assert d.hists["length"].n == 4 and d.hists["image_width"].n == 2


def test_the_partition_counters_are_the_manifest_s():
    from dataclasses import fields

    from parsit_data.format import SourceCounts
    from parsit_data.stats import SourceStats

    assert [f.name for f in fields(SourceStats)] == list(SourceCounts.model_fields)
    s = SourceStats(read=3, kept=1)
    s.quarantined["empty_turn"] += 2
    assert s.to_counts().accounting_error() is None
    s.read += 1
    assert "read 4 != kept 1 + quarantined 2" in s.to_counts().accounting_error()
