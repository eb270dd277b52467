"""A deterministic, resumable, rank-sharded batch sampler.

The model of the data stream:

1. The GLOBAL order of an epoch is a function of (seed, epoch) and the data alone, never of the number
   of ranks: each build contributes its rows ``weight`` times (the integer part as whole copies, the
   fraction as a seeded subset), the pool is shuffled, and, with ``group_by_length``, cut into chunks of
   ``group_size`` that are each of one modality (with / without images) and sorted longest first, the
   chunks then shuffled (LLaVA's modality + length grouping, with a chunk size that does not depend on
   the world size).
2. A step consumes the next ``batch_size * world_size`` samples of that order; rank ``r`` takes the
   ``r``-th contiguous block of ``batch_size``. Every rank computes the same order and reads only its
   own samples: there is no dispatch from rank 0.
3. The state is ``(epoch, consumed)``: how many GLOBAL samples of the epoch were handed to the training
   loop. A run resumed from it, with any world size or batch size, continues with exactly the samples
   not yet seen, in the same order.

``consumed`` is advanced by :class:`parsit_train.data.loader.ParsitLoader` as it hands each batch to
the caller (the DataLoader's workers run ahead; their prefetched batches are not counted).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np

from parsit_data.errors import ParsitError

log = logging.getLogger(__name__)

STATE_VERSION = 1


class ResumableBatchSampler:
    """Yields this rank's batches (lists of dataset indices) of the current epoch, from the saved position.

    ``build_sizes`` are the rows of each build in dataset order; ``weights`` their per-epoch multiplicity
    (1.0: every row once; 0.5: a seeded half; 2.0: every row twice). ``lengths`` and ``has_image`` are
    needed only with ``group_by_length``. ``drop_last`` (default) drops the epoch's final incomplete global
    batch so every rank runs the same number of steps; without it the last global batch is filled up by
    wrapping around to the start of the epoch's order.
    """

    def __init__(
        self,
        build_sizes: Sequence[int],
        batch_size: int,
        *,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        group_by_length: bool = False,
        lengths: np.ndarray | None = None,
        has_image: np.ndarray | None = None,
        group_size: int | None = None,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ParsitError(f"bad sampler geometry: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.build_sizes = [int(n) for n in build_sizes]
        weights = [1.0] * len(self.build_sizes) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.build_sizes):
            raise ParsitError(f"{len(weights)} mixture weights for {len(self.build_sizes)} builds: give one per build")
        if any(not math.isfinite(w) or w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ParsitError(f"mixture weights must be finite, >= 0 and not all 0, got {weights}")
        self.weights = weights
        self.offsets = np.concatenate([[0], np.cumsum(self.build_sizes)]).astype(np.int64)
        self.batch_size, self.seed, self.rank, self.world_size = int(batch_size), int(seed), int(rank), int(world_size)
        self.shuffle, self.group_by_length, self.drop_last = shuffle, group_by_length, drop_last
        if group_by_length:
            if lengths is None or has_image is None:
                raise ParsitError("group_by_length needs the rows' lengths and modality (has_image)")
            if len(lengths) != self.offsets[-1] or len(has_image) != self.offsets[-1]:
                raise ParsitError("lengths/has_image do not have one entry per row")
        self.lengths, self.has_image = lengths, has_image
        self.group_size = int(group_size or 8 * self.batch_size * self.world_size)
        self.epoch = 0
        self.consumed = 0
        self._cache: tuple[int, np.ndarray] | None = None

    # -- the global order --------------------------------------------------------------------------

    def _rng(self, epoch: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch, stream]))

    def _pool(self, epoch: int) -> np.ndarray:
        rng = self._rng(epoch, 0)
        parts = []
        for b, (n, w) in enumerate(zip(self.build_sizes, self.weights, strict=True)):
            rows = np.arange(self.offsets[b], self.offsets[b + 1], dtype=np.int64)
            whole = int(math.floor(w))
            parts.extend([rows] * whole)
            extra = int(round((w - whole) * n))
            if extra:
                parts.append(np.sort(rng.choice(rows, size=extra, replace=False)))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _grouped(self, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        chunks, leftovers = [], []
        for modality in (True, False):
            sel = pool[self.has_image[pool] == modality]
            for start in range(0, len(sel), self.group_size):
                chunk = sel[start : start + self.group_size]
                chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                (chunks if len(chunk) == self.group_size else leftovers).append(chunk)
        order = [chunks[i] for i in rng.permutation(len(chunks))]
        if leftovers:  # the partial chunks of both modalities go last, together (as LLaVA does)
            tail = np.concatenate(leftovers)
            order.append(tail[np.argsort(-self.lengths[tail], kind="stable")])
        return np.concatenate(order) if order else pool

    def epoch_order(self, epoch: int | None = None) -> np.ndarray:
        """The global sample order of an epoch (dataset indices); the same on every rank."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        order = self._pool(epoch)
        rng = self._rng(epoch, 1)
        if self.shuffle:
            order = rng.permutation(order)
        if self.group_by_length:
            order = self._grouped(order, rng)
        self._cache = (epoch, order)
        return order

    # -- iteration ---------------------------------------------------------------------------------

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Batches of this rank left in the current epoch."""
        left = len(self.epoch_order()) - self.consumed
        g = self.global_batch_size
        return max(0, left // g if self.drop_last else -(-left // g))

    def __iter__(self) -> Iterator[list[int]]:
        order = self.epoch_order()
        g, b, total = self.global_batch_size, self.batch_size, len(order)
        pos = self.consumed
        while pos < total:
            chunk = order[pos : pos + g]
            if len(chunk) < g:
                if self.drop_last:
                    return
                chunk = np.resize(np.concatenate([chunk, order]), g)  # wrap around to the epoch's start
            yield chunk[self.rank * b : (self.rank + 1) * b].tolist()
            pos += g

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` global batches as consumed by the training loop."""
        self.consumed = min(len(self.epoch_order()), self.consumed + steps * self.global_batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning, unless the sampler is already in it (a resumed run)."""
        if int(epoch) != self.epoch:
            self.epoch, self.consumed = int(epoch), 0

    def end_epoch(self) -> None:
        self.epoch, self.consumed = self.epoch + 1, 0

    # -- checkpoint state --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "consumed_samples": self.consumed,
            "build_sizes": list(self.build_sizes),
            "weights": list(self.weights),
            "shuffle": self.shuffle,
            "group_by_length": self.group_by_length,
            "group_size": self.group_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` left off; refuse a state whose global order this sampler cannot recreate."""
        if state.get("version") != STATE_VERSION:
            raise ParsitError(f"sampler state version {state.get('version')!r}, expected {STATE_VERSION}")
        mismatches = [
            f"{key}: checkpoint {state[key]!r}, this run {mine!r}"
            for key, mine in (
                ("seed", self.seed),
                ("build_sizes", list(self.build_sizes)),
                ("weights", list(self.weights)),
                ("shuffle", self.shuffle),
                ("group_by_length", self.group_by_length),
            )
            if state[key] != mine
        ]
        if mismatches:
            raise ParsitError(
                "cannot resume the data position, the sample order would differ: " + "; ".join(mismatches)
                + " (resume with the same seed, builds, weights and grouping)"
            )
        if int(state["group_size"]) != self.group_size:
            log.info("resuming with the checkpoint's group_size %s (not %s)", state["group_size"], self.group_size)
            self.group_size = int(state["group_size"])
        self._cache = None
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed_samples"])
