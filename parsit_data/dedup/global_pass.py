"""The global pass: near duplicates and contamination over every row of a build, after the partitions.

Input: the signature files the partitions left (``_parts/sig-NNNNN.arrow``), read in partition order, so
rows are in input order whatever engine, worker count or resume produced them; the result is a pure
function of them (and of the eval sets and thresholds).

- **near duplicate**: row j is a near copy of an earlier row i when both have the same number of images,
  image k of one within ``image_bits`` of image k of the other, and their texts' estimated Jaccard is at
  least ``text_jaccard`` (text alone for rows without images). Copies form clusters (union-find over the
  verified pairs); the earliest row of a cluster is kept, every other one names it.
- **image-only / text-only** matches (the same chart with other questions; the same question on another
  image) are counted and shown, never acted on.
- **contamination**: a row with an image within ``image_bits`` of an eval image, or a user turn whose
  Jaccard with an eval question is at least ``eval_text_jaccard`` (questions and turns shorter than
  ``eval_min_chars`` are not compared: generic prompts are not leaks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from parsit_data.dedup.index import hamming, image_candidates, minhash_candidates, pairs_at_least, sorted_unique
from parsit_data.dedup.signatures import NUM_PERM, PHASH_BYTES, VIEWS, sig_path, table_from_bytes

#: Pairs of each kind kept as examples for the report (the counts are complete).
MAX_EXAMPLES = 50


@dataclass(frozen=True)
class Thresholds:
    image_bits: int = 28
    text_jaccard: float = 0.7
    eval_text_jaccard: float = 0.7
    eval_min_chars: int = 40

    @classmethod
    def of(cls, config) -> "Thresholds":
        return cls(config.dup_image_bits, config.dup_text_jaccard, config.eval_text_jaccard, config.eval_min_chars)


@dataclass
class Signatures:
    """Every row's signatures, in input order (or an eval set's items)."""

    part: np.ndarray  # partition index of each row
    row: np.ndarray  # row in its partition (in the shard before the global pass)
    source: list[str]
    sample_id: list[str]
    position: np.ndarray
    text: np.ndarray  # (N, NUM_PERM) uint32
    img_hash: np.ndarray  # (M, VIEWS, PHASH_BYTES) uint8
    img_off: np.ndarray  # (N + 1,) row -> its images
    user: np.ndarray  # (U, NUM_PERM) uint32
    user_chars: np.ndarray  # (U,)
    user_row: np.ndarray  # (U,) row of each user turn

    @property
    def n(self) -> int:
        return len(self.sample_id)

    @property
    def img_row(self) -> np.ndarray:
        return np.repeat(np.arange(self.n), np.diff(self.img_off))

    @classmethod
    def from_tables(cls, tables: list[tuple[int, str, pa.Table]]) -> "Signatures":
        parts, rows, sources, ids, pos, text, hashes, counts, user, uchars, urow = ([] for _ in range(11))
        base = 0
        for index, source, t in tables:
            n = t.num_rows
            parts.append(np.full(n, index, np.int64))
            rows.append(np.arange(n, dtype=np.int64))
            sources.extend([source] * n)
            ids.extend(t.column("sample_id").to_pylist())
            pos.append(t.column("position").to_numpy(zero_copy_only=False))
            tx = t.column("text").combine_chunks()
            text.append(tx.flatten().to_numpy(zero_copy_only=False).reshape(n, NUM_PERM))
            ph = t.column("phash").combine_chunks()
            flat = ph.flatten().to_pylist()
            size = VIEWS * PHASH_BYTES
            hashes.append(np.frombuffer(b"".join(h if len(h) == size else bytes(size) for h in flat),
                                        np.uint8).reshape(len(flat), VIEWS, PHASH_BYTES))
            counts.append(np.diff(ph.offsets.to_numpy()))
            us = t.column("user").combine_chunks()
            uoff = us.offsets.to_numpy()
            user.append(us.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, NUM_PERM))
            uchars.append(t.column("user_chars").combine_chunks().flatten().to_numpy(zero_copy_only=False))
            urow.append(base + np.repeat(np.arange(n), np.diff(uoff)))
            base += n
        cat = (lambda xs, shape, dt: np.concatenate(xs) if xs else np.zeros(shape, dt))
        c = cat(counts, (0,), np.int64)
        return cls(cat(parts, (0,), np.int64), cat(rows, (0,), np.int64), sources, ids, cat(pos, (0,), np.int64),
                   cat(text, (0, NUM_PERM), np.uint32), cat(hashes, (0, VIEWS, PHASH_BYTES), np.uint8),
                   np.concatenate([[0], np.cumsum(c)]).astype(np.int64), cat(user, (0, NUM_PERM), np.uint32),
                   cat(uchars, (0,), np.int64), cat(urow, (0,), np.int64))


def load_signatures(out, parts: list[tuple[int, str]]) -> Signatures:
    """The signatures of partitions ``(index, source)``, in that order."""
    return Signatures.from_tables([(i, src, table_from_bytes(sig_path(out, i).read_bytes())) for i, src in parts])


@dataclass
class EvalSignatures:
    """What the eval sets hold: their images' hashes and their questions' MinHashes, item by item."""

    items: list[dict] = field(default_factory=list)  # {"eval_set", "item", "question", "images"}
    img_hash: np.ndarray = field(default_factory=lambda: np.zeros((0, VIEWS, PHASH_BYTES), np.uint8))
    img_item: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    question: np.ndarray = field(default_factory=lambda: np.zeros((0, NUM_PERM), np.uint32))
    question_chars: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    question_item: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    problems: dict[str, int] = field(default_factory=dict)  # eval set -> items or images that could not be read


@dataclass
class Findings:
    n: int
    #: later copy -> kept row (the earliest of its cluster)
    dup_of: dict[int, int] = field(default_factory=dict)
    #: verified near-duplicate pairs (i < j): (i, j, max image bits, text jaccard)
    pairs: list[tuple[int, int, int, float]] = field(default_factory=list)
    image_only: int = 0
    text_only: int = 0
    image_only_examples: list[tuple[int, int]] = field(default_factory=list)
    text_only_examples: list[tuple[int, int]] = field(default_factory=list)
    #: row -> {"eval_set", "item", "via": "image" | "question", "score"}
    contaminated: dict[int, dict] = field(default_factory=dict)


def _positional_match(sig: Signatures, i: np.ndarray, j: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row pair: same image count and image k within ``bits`` of image k; and the largest distance."""
    ni, nj = np.diff(sig.img_off)[i], np.diff(sig.img_off)[j]
    same = ni == nj
    worst = np.zeros(len(i), np.int64)
    ok = same.copy()
    idx = np.flatnonzero(same & (ni > 0))
    if len(idx):
        reps = ni[idx]
        pair = np.repeat(np.arange(len(idx)), reps)
        k = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
        a = sig.img_off[i[idx]][pair] + k
        b = sig.img_off[j[idx]][pair] + k
        d = hamming(sig.img_hash[a], sig.img_hash[b])
        w = np.zeros(len(idx), np.int64)
        np.maximum.at(w, pair, d)
        worst[idx] = w
        ok[idx] = w <= bits
    return ok, worst


def _find(parent: dict[int, int], x: int) -> int:
    while parent.get(x, x) != x:
        parent[x] = parent.get(parent[x], parent[x])
        x = parent[x]
    return x


def near_duplicates(sig: Signatures, th: Thresholds, exclude: set[int] = frozenset()) -> Findings:
    """Near duplicates, image-only and text-only matches among ``sig``'s rows (rows in ``exclude``, already
    quarantined for contamination, take no part in clusters)."""
    f = Findings(sig.n)
    ti, tj = minhash_candidates(sig.text)
    tm, jac = pairs_at_least(sig.text, ti, sig.text, tj, th.text_jaccard)
    ti, tj = ti[tm], tj[tm]
    img_ok, worst = _positional_match(sig, ti, tj, th.image_bits)
    has_img = np.diff(sig.img_off)
    full = img_ok  # text matches, and images match (or neither row has one)
    text_only = ~img_ok & ((has_img[ti] > 0) | (has_img[tj] > 0))
    f.text_only = int(text_only.sum())
    f.text_only_examples = list(zip(ti[text_only][:MAX_EXAMPLES].tolist(), tj[text_only][:MAX_EXAMPLES].tolist()))

    # Image-only: rows whose images all match, texts apart.
    if len(sig.img_hash):
        ii, ij = image_candidates(sig.img_hash)
        d = hamming(sig.img_hash[ii], sig.img_hash[ij])
        keep = d <= th.image_bits
        row = sig.img_row
        ri, rj = row[ii[keep]], row[ij[keep]]
        cross = ri != rj
        code = sorted_unique(np.minimum(ri[cross], rj[cross]) * sig.n + np.maximum(ri[cross], rj[cross]))
        ri, rj = code // sig.n, code % sig.n
        ok, _ = _positional_match(sig, ri, rj, th.image_bits)
        ri, rj = ri[ok], rj[ok]
        text_pairs = set((ti * sig.n + tj).tolist())
        only = np.array([a * sig.n + b not in text_pairs for a, b in zip(ri.tolist(), rj.tolist())], bool)
        f.image_only = int(only.sum())
        f.image_only_examples = list(zip(ri[only][:MAX_EXAMPLES].tolist(), rj[only][:MAX_EXAMPLES].tolist()))

    parent: dict[int, int] = {}
    for a, b, w, jv in zip(ti[full].tolist(), tj[full].tolist(), worst[full].tolist(), jac[full].tolist()):
        f.pairs.append((a, b, w, round(jv, 4)))
        if a in exclude or b in exclude:
            continue
        ra, rb = _find(parent, a), _find(parent, b)
        if ra != rb:  # the earlier row is the root: the kept one
            parent[max(ra, rb)] = min(ra, rb)
    for x in sorted(parent):
        r = _find(parent, x)
        if r != x:
            f.dup_of[x] = r
    return f


def contamination(sig: Signatures, ev: EvalSignatures, th: Thresholds) -> dict[int, dict]:
    """Rows with a near copy of an eval image or question: row -> the first eval item (in eval order) found."""
    hits: dict[int, tuple[int, str, float]] = {}  # row -> (eval item, via, score)

    def note(row: int, item: int, via: str, score: float) -> None:
        if row not in hits or item < hits[row][0]:
            hits[row] = (item, via, score)

    m = len(sig.img_hash)
    if m and len(ev.img_hash):
        ii, ij = image_candidates(np.concatenate([sig.img_hash, ev.img_hash]))
        cross = (ii < m) & (ij >= m)
        ii, ij = ii[cross], ij[cross] - m
        d = hamming(sig.img_hash[ii], ev.img_hash[ij])
        ok = d <= th.image_bits
        rows = sig.img_row[ii[ok]]
        for r, e, dv in zip(rows.tolist(), ev.img_item[ij[ok]].tolist(), d[ok].tolist()):
            note(r, e, "image", dv)
    long_u = np.flatnonzero(sig.user_chars >= th.eval_min_chars)
    long_q = np.flatnonzero(ev.question_chars >= th.eval_min_chars)
    if len(long_u) and len(long_q):
        u = len(long_u)
        ii, ij = minhash_candidates(np.concatenate([sig.user[long_u], ev.question[long_q]]))
        cross = (ii < u) & (ij >= u)
        ii, ij = ii[cross], ij[cross] - u
        ok, jac = pairs_at_least(sig.user, long_u[ii], ev.question, long_q[ij], th.eval_text_jaccard)
        rows = sig.user_row[long_u[ii[ok]]]
        for r, e, jv in zip(rows.tolist(), ev.question_item[long_q[ij[ok]]].tolist(), jac.tolist()):
            note(r, e, "question", round(jv, 4))
    out = {}
    for r in sorted(hits):
        e, via, score = hits[r]
        item = ev.items[e]
        out[r] = {"eval_set": item["eval_set"], "item": item["item"], "via": via, "score": score}
    return out


def global_pass(sig: Signatures, ev: EvalSignatures | None, th: Thresholds, quarantine_contaminated: bool,
                near_dups: bool) -> Findings:
    contaminated = contamination(sig, ev, th) if ev is not None else {}
    exclude = set(contaminated) if quarantine_contaminated else set()
    f = near_duplicates(sig, th, exclude) if near_dups else Findings(sig.n)
    f.contaminated = contaminated
    return f
