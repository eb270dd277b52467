"""Candidate pairs without comparing all pairs: LSH banding over MinHash signatures, bit-sampling tables
over the 256-bit image hashes; then each candidate verified exactly (estimated Jaccard, Hamming distance).

Every function is a pure function of its arrays: the same rows in the same order give the same pairs,
whatever built them (worker count, engine, a resume).

Grouping: within one band (or table) the items sharing a key form a group; a group of up to
:data:`ALL_PAIRS_MAX` items yields all its pairs, a larger one (thousands of copies of one caption) yields
each member with the group's first items and its predecessor: linear, and every member of a cluster of
copies still meets the earliest one.
"""

from __future__ import annotations

import numpy as np

#: LSH banding of a 128-permutation MinHash: 32 bands of 4 rows. A pair at Jaccard 0.7 is a candidate
#: with probability 1 - (1 - 0.7^4)^32 > 0.9999; at 0.3, 0.23 (then refused by verification).
BANDS, ROWS = 32, 4
#: Image tables: 32 tables of 24 bits (3 whole bytes) sampled (seeded) from the 256. Two views 20 bits apart collide in a
#: table with probability (236/256)^24 = 0.14, in at least one with 0.993 (28 bits apart: 0.87); two
#: unrelated ones (~128 bits apart) with 32 * 2^-24 per pair of views.
TABLES, TABLE_BITS = 32, 24
ALL_PAIRS_MAX = 32
FIRST_K = 8

_M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9)


def group_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j, item positions) of items whose keys are equal (see the module note on large groups)."""
    order = np.argsort(keys, kind="stable")  # stable: equal keys stay in item order
    return sorted_group_pairs(keys[order], order)


def sorted_group_pairs(k: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`group_pairs` of keys already sorted (``k``), ``order`` giving each one's item position."""
    n = len(k)
    e = np.zeros(0, np.int64)
    if n < 2:
        return e, e
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    sizes = np.diff(np.concatenate((starts, [n])))
    ii, jj = [e], [e]
    # Groups of one size at a time, vectorised (groups of 2 are the common case).
    for g in np.unique(sizes[(sizes > 1) & (sizes <= ALL_PAIRS_MAX)]).tolist():
        members = order[starts[sizes == g][:, None] + np.arange(g)]
        a, b = np.triu_indices(g, 1)
        ii.append(members[:, a].ravel())
        jj.append(members[:, b].ravel())
    for s, g in zip(starts[sizes > ALL_PAIRS_MAX].tolist(), sizes[sizes > ALL_PAIRS_MAX].tolist()):
        members = order[s:s + g]
        a = np.concatenate([np.repeat(np.arange(FIRST_K), g), np.arange(g - 1)])
        b = np.concatenate([np.tile(np.arange(g), FIRST_K), np.arange(1, g)])
        keep = a < b
        ii.append(members[a[keep]])
        jj.append(members[b[keep]])
    i, j = np.concatenate(ii), np.concatenate(jj)
    return np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (numpy 2's hash-table unique is much slower on these arrays)."""
    a = np.sort(x)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


def unique_pairs(i: np.ndarray, j: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, without repeats."""
    if len(i) == 0:
        return i, j
    code = sorted_unique(i.astype(np.int64) * n + j.astype(np.int64))
    return code // n, code % n


def _mix(cols: np.ndarray) -> np.ndarray:
    """One uint64 key from a few uint32 columns (a collision costs one verification, no more)."""
    h = np.zeros(len(cols), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in range(cols.shape[1]):
            h = (h ^ cols[:, c].astype(np.uint64)) * _M1
            h ^= h >> np.uint64(31)
            h *= _M2
    return h


def minhash_candidates(sigs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs of rows of ``sigs`` (N, 128) uint32 by LSH banding. Empty signatures never pair."""
    n = len(sigs)
    empty = (sigs == 0xFFFFFFFF).all(axis=1)
    ii, jj = [], []
    for b in range(BANDS):
        keys = _mix(sigs[:, b * ROWS:(b + 1) * ROWS])
        i, j = group_pairs(keys)
        ii.append(i)
        jj.append(j)
    i, j = unique_pairs(np.concatenate(ii), np.concatenate(jj), max(n, 1))
    keep = ~(empty[i] | empty[j])
    return i[keep], j[keep]


def jaccard(sigs_a: np.ndarray, sigs_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of row pairs (both (P, 128))."""
    return np.count_nonzero(sigs_a == sigs_b, axis=1) / sigs_a.shape[1] if len(sigs_a) else np.zeros(0)


#: Candidate pairs verified at a time: the two gathered (P, 128) blocks stay a few MB (millions of
#: candidates gathered at once are gigabytes of fresh memory, and the page faults cost more than the compare).
PAIR_CHUNK = 1 << 14


def pairs_at_least(a: np.ndarray, i: np.ndarray, b: np.ndarray, j: np.ndarray, threshold: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The k (ascending) where the estimated Jaccard of ``a[i[k]]`` and ``b[j[k]]`` is at least ``threshold``,
    and those Jaccards: exactly ``k = flatnonzero(jaccard(a[i], b[j]) >= threshold)``.

    Verified in chunks of :data:`PAIR_CHUNK`, the permutations in three blocks (half, a quarter, a quarter):
    a pair leaves once even matching every permutation left could not reach ``threshold``, so most
    candidates (LSH banding lets through pairs at Jaccard 0.3-0.6) are compared on half their signature.
    """
    n = a.shape[1]
    blocks = [(0, n // 2), (n // 2, 3 * n // 4), (3 * n // 4, n)]
    ks, jacs = [np.zeros(0, np.int64)], [np.zeros(0, np.float64)]
    for s in range(0, len(i), PAIR_CHUNK):
        ic, jc = i[s:s + PAIR_CHUNK], j[s:s + PAIR_CHUNK]
        alive = np.arange(len(ic))
        count = np.zeros(len(ic), np.int64)
        for lo, hi in blocks:
            if not len(alive):
                break
            count[alive] += np.count_nonzero(a[ic[alive], lo:hi] == b[jc[alive], lo:hi], axis=1)
            alive = alive[(count[alive] + (n - hi)) / n >= threshold]  # the best it can still reach
        ks.append(s + alive)
        jacs.append(count[alive] / n)
    return np.concatenate(ks), np.concatenate(jacs)


def _sample_bytes(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.sort(rng.choice(32, TABLE_BITS // 8, replace=False)) for _ in range(TABLES)])


#: The bits of each table, sampled as whole bytes of the packed hash: 3 operations per key, not 24.
_BYTES = _sample_bytes()


def image_candidates(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs of images (i < j) from their hashes ((N, VIEWS, 32) uint8): every view of every
    image goes into bit-sampling tables; views of one image never pair with each other."""
    n, views = hashes.shape[0], hashes.shape[1]
    if n < 2:
        e = np.zeros(0, np.int64)
        return e, e
    flat = hashes.reshape(n * views, -1)
    image = np.arange(n * views, dtype=np.uint64) // np.uint64(views)
    ii, jj = [], []
    for t in range(TABLES):
        keys = np.zeros(len(flat), np.uint64)
        for k, b in enumerate(_BYTES[t].tolist()):
            keys |= flat[:, b].astype(np.uint64) << np.uint64(8 * k)
        # One entry per (key, image): an image's views often share a key, and must not pair with each other.
        code = sorted_unique((keys << np.uint64(64 - TABLE_BITS)) | image)
        img = (code & np.uint64((1 << (64 - TABLE_BITS)) - 1)).astype(np.int64)
        i, j = sorted_group_pairs(code >> np.uint64(64 - TABLE_BITS), np.arange(len(code)))
        ii.append(np.minimum(img[i], img[j]))
        jj.append(np.maximum(img[i], img[j]))
    return unique_pairs(np.concatenate(ii), np.concatenate(jj), n)


def hamming(a: np.ndarray, b: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Distance of image pairs (both (P, VIEWS, 32) uint8): the smallest over every pair of views."""
    out = np.empty(len(a), np.int64)
    for s in range(0, len(a), chunk):
        x = a[s:s + chunk, :, None, :] ^ b[s:s + chunk, None, :, :]
        out[s:s + chunk] = np.bitwise_count(x).sum(axis=-1, dtype=np.int64).min(axis=(1, 2))
    return out
