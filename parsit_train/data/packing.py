"""The packing plan: an epoch's samples bin-packed into sequences of ``pack_length`` tokens, before training.

Parsit's shards store every row's exact multimodal length (text tokens plus visual tokens), its image count
and its supervised-token count, so the plan needs no estimate and no slack: it is computed from three small
columns read without loading a row, and a pack never overflows.

The plan is a pure function of (the epoch's sample order, lengths, image counts, pack length, image cap,
window): the sampler computes the order from (data, weights, seed, epoch), so the packs are the same on
every rank and for any number of ranks or loader workers, and a data position counted in packs resumes
exactly, also with another world size.

Algorithm: best-fit decreasing inside consecutive windows of the shuffled epoch order. Each window (default
``DEFAULT_WINDOW`` samples) is sorted longest first, and each sample goes into the open pack whose free room
is the smallest that still holds it (and that has room under ``max_images``), else into a new pack. The
window's packs are then shuffled (otherwise every window would start with its longest samples), and windows
follow each other in the epoch's order, so the epoch's randomness survives packing at the scale of a window.
A window bounds the mixing of samples in time (a sample is trained at most one window away from where the
shuffle put it) and the size of the open-pack list. ``docs/PACKING.md`` has the measurements behind the
choice (utilisation against window size, first-fit vs best-fit, plan time).

Nothing is dropped and nothing is split: every sample of the order is in exactly one pack. A sample with
more images than ``max_images`` (or longer than the pack length, which the loader refuses beforehand) is
the only sample of its pack.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass

import numpy as np

from parsit_data.errors import ParsitError

DEFAULT_WINDOW = 16384


@dataclass(frozen=True)
class PackPlan:
    """Packs as a CSR: pack ``k`` holds dataset indices ``members[offsets[k]:offsets[k + 1]]`` in order."""

    offsets: np.ndarray  # int64 [packs + 1]
    members: np.ndarray  # int64 dataset indices
    tokens: np.ndarray  # int64 [packs]: multimodal tokens of each pack
    images: np.ndarray  # int64 [packs]: images of each pack

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def pack(self, k: int) -> np.ndarray:
        return self.members[self.offsets[k] : self.offsets[k + 1]]


def _best_fit(lengths: list[int], images: list[int], pack_length: int, max_images: int | None) -> list[int]:
    """Bin of each item, items given longest first (best-fit decreasing with an image cap).

    Open bins are kept in two sorted lists of (free room, bin): those that can still take an image and
    those at the image cap (text only). A bin whose room is below the shortest item left is closed: items
    come longest first, so nothing could go into it any more.
    """
    cap = max_images if max_images is not None else 1 << 30
    free_img: list[tuple[int, int]] = []
    free_txt: list[tuple[int, int]] = []
    room: list[int] = []
    imgs: list[int] = []
    out = []
    shortest = lengths[-1] if lengths else 0
    for n, k in zip(lengths, images, strict=True):
        chosen, source, pos = -1, None, 0
        if k <= cap:
            p = bisect_left(free_img, (n, -1))
            while p < len(free_img) and imgs[free_img[p][1]] + k > cap:  # multi-image item: enough slots
                p += 1
            if p < len(free_img):
                chosen, source, pos = free_img[p][1], free_img, p
            if k == 0:
                q = bisect_left(free_txt, (n, -1))
                if q < len(free_txt) and (chosen < 0 or free_txt[q][0] < room[chosen]):
                    chosen, source, pos = free_txt[q][1], free_txt, q
        if chosen < 0:  # a new bin (also for an item over the image cap: alone in its pack)
            chosen = len(room)
            room.append(pack_length)
            imgs.append(0)
        else:
            del source[pos]
        room[chosen] -= n
        imgs[chosen] += k
        if room[chosen] >= shortest and k <= cap:
            insort(free_img if imgs[chosen] < cap else free_txt, (room[chosen], chosen))
        out.append(chosen)
    return out


def plan_packs(
    order: np.ndarray,
    lengths: np.ndarray,
    image_counts: np.ndarray,
    pack_length: int,
    *,
    max_images: int | None = None,
    window: int = DEFAULT_WINDOW,
    rng: np.random.Generator | None = None,
) -> PackPlan:
    """Pack the samples of ``order`` (dataset indices, repeats allowed) into packs of at most ``pack_length``.

    ``lengths`` / ``image_counts`` are per dataset row. ``rng`` shuffles the packs of each window (None: kept
    in plan order).
    """
    order = np.asarray(order, dtype=np.int64)
    if pack_length < 1:
        raise ParsitError(f"pack_length must be positive, got {pack_length}")
    if max_images is not None and max_images < 1:
        raise ParsitError(f"max_images_per_pack must be at least 1, got {max_images}")
    lens = np.asarray(lengths, dtype=np.int64)[order]
    imgs = np.asarray(image_counts, dtype=np.int64)[order]
    over = np.flatnonzero(lens > pack_length)
    if over.size:
        raise ParsitError(
            f"{over.size} samples are longer than pack_length={pack_length} (longest {int(lens.max())} tokens); "
            "packing never splits a sample: raise data.pack_length to at least data.max_length"
        )
    bins = np.empty(len(order), dtype=np.int64)
    base = 0
    for start in range(0, len(order), max(1, int(window))):
        sl = slice(start, start + int(window))
        wl = lens[sl]
        by_len = np.argsort(-wl, kind="stable")
        local = np.asarray(_best_fit(wl[by_len].tolist(), imgs[sl][by_len].tolist(), pack_length, max_images),
                           dtype=np.int64)
        n_bins = int(local.max()) + 1 if local.size else 0
        perm = rng.permutation(n_bins) if rng is not None else np.arange(n_bins)
        # bins of this window, in shuffled order, numbered after the previous windows'
        placed = np.empty(wl.shape[0], dtype=np.int64)
        placed[by_len] = perm[local] + base
        bins[sl] = placed
        base += n_bins
    # Members of each pack in epoch order (stable sort by pack): images keep the order of the shuffle.
    by_pack = np.argsort(bins, kind="stable")
    counts = np.bincount(bins, minlength=base)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    tokens = np.bincount(bins, weights=lens, minlength=base).astype(np.int64)
    images = np.bincount(bins, weights=imgs, minlength=base).astype(np.int64)
    return PackPlan(offsets=offsets, members=order[by_pack], tokens=tokens, images=images)


def balance(work: np.ndarray, visual: np.ndarray, ranks: int, per_rank: int) -> np.ndarray:
    """Which of ``ranks * per_rank`` units (packs of one global micro-batch) each rank takes.

    Longest-processing-time first on (tokens, then visual tokens): the heaviest remaining unit goes to the
    rank with the least work that still has a free slot. Returns [ranks, per_rank] positions into ``work``.
    A pure function of the units, so every rank computes the same assignment.
    """
    n = len(work)
    if n != ranks * per_rank:
        raise ValueError(f"{n} units for {ranks} ranks x {per_rank}")
    if ranks == 1:
        return np.arange(n).reshape(1, per_rank)
    cost = np.asarray(work, dtype=np.float64) + np.asarray(visual, dtype=np.float64)  # vision runs on top
    order = np.lexsort((np.arange(n), -np.asarray(visual), -cost))
    load = np.zeros(ranks)
    vis = np.zeros(ranks)
    slots: list[list[int]] = [[] for _ in range(ranks)]
    for u in order:
        open_ = [r for r in range(ranks) if len(slots[r]) < per_rank]
        r = min(open_, key=lambda r: (load[r], vis[r], r))
        slots[r].append(int(u))
        load[r] += cost[u]
        vis[r] += visual[u]
    return np.array([sorted(s) for s in slots], dtype=np.int64)


# --- utilisation of the three batching strategies (the benchmark and `parsit-train plan`) --------------------
def padded_utilisation(lengths_in_order: np.ndarray, batch_size: int) -> float:
    """Real tokens / computed positions when consecutive ``batch_size`` samples are padded to their longest."""
    lens = np.asarray(lengths_in_order, dtype=np.int64)
    n = len(lens) // batch_size * batch_size
    if n == 0:
        return 1.0
    rows = lens[:n].reshape(-1, batch_size)
    return float(rows.sum() / (rows.max(axis=1).sum() * batch_size))


def packed_utilisation(plan: PackPlan, pack_length: int) -> float:
    """Real tokens / ``pack_length`` positions per pack (a packed micro-batch of one pack is padded to the
    pack length only when the collator is asked to; this counts the worst case)."""
    return float(plan.tokens.sum() / (len(plan) * pack_length)) if len(plan) else 1.0
