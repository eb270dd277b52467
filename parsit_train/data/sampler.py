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
3. With ``pack_length`` (packing), the epoch's order is cut into packs by
   :func:`parsit_train.data.packing.plan_packs` and the unit of the stream is a pack instead of a sample:
   a step consumes the next ``batch_size * world_size`` packs, assigned to ranks by
   :func:`~parsit_train.data.packing.balance` so the ranks' tokens and visual tokens are even. A rank's
   batch is then a list of ``(dataset index, pack slot)`` pairs (slot: which of its ``batch_size`` packs).
4. The state (:class:`DataPosition`) is ``(epoch, consumed)``: how many GLOBAL units (samples or packs) of
   the epoch were handed to the training loop, plus what the order depends on, builds named by their
   manifest's config hash. A run resumed from it, with any world size or batch size, continues with
   exactly the units not yet seen, in the same order; a state from another order is refused.

``consumed`` is advanced by :class:`parsit_train.data.loader.ParsitLoader` as it hands each batch to
the caller (the DataLoader's workers run ahead; their prefetched batches are not counted).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from parsit_data.errors import ParsitError
from parsit_train.data.packing import DEFAULT_WINDOW, PackPlan, balance, plan_packs

log = logging.getLogger(__name__)

STATE_VERSION = 2


@dataclass
class DataPosition:
    """Where a run is in its data stream, and everything the stream's order depends on.

    ``build_ids`` are the builds' manifest config hashes: a build rebuilt with other inputs or options (even
    to the same number of rows) is another order, and resuming on it is refused. ``consumed_samples``
    counts global units handed to the loop: samples, or packs when ``pack_length`` is set.
    """

    seed: int
    epoch: int
    consumed_samples: int
    build_sizes: list[int]
    weights: list[float]
    shuffle: bool
    group_by_length: bool
    group_size: int
    build_ids: list[str | None] = field(default_factory=list)
    pack_length: int | None = None
    max_images_per_pack: int | None = None
    pack_window: int = DEFAULT_WINDOW
    version: int = STATE_VERSION

    # The keys that define the global order, in the order a refusal names them.
    ORDER_KEYS = ("seed", "build_sizes", "build_ids", "weights", "shuffle", "group_by_length", "pack_length",
                  "max_images_per_pack", "pack_window")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict) -> DataPosition:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            version = state.get("version") if isinstance(state, dict) else None
            raise ParsitError(f"sampler state version {version!r}, expected {STATE_VERSION}: the checkpoint was "
                              "written by another release of the trainer; start the run afresh "
                              "(checkpoint.resume: false)")
        known = {k: state[k] for k in cls.__dataclass_fields__ if k in state}
        try:
            return cls(**known)
        except TypeError as exc:
            raise ParsitError(f"sampler state is incomplete ({exc}): start the run afresh") from None

    def mismatches(self, mine: DataPosition) -> list[str]:
        """What differs between this (a checkpoint's) position and ``mine`` in what defines the order."""
        return [f"{key}: checkpoint {getattr(self, key)!r}, this run {getattr(mine, key)!r}"
                for key in self.ORDER_KEYS if getattr(self, key) != getattr(mine, key)]


class ResumableBatchSampler:
    """Yields this rank's batches (lists of dataset indices) of the current epoch, from the saved position.

    ``build_sizes`` are the rows of each build in dataset order; ``weights`` their per-epoch multiplicity
    (1.0: every row once; 0.5: a seeded half; 2.0: every row twice). ``lengths`` and ``has_image`` are
    needed only with ``group_by_length``. ``drop_last`` (default) drops the epoch's final incomplete global
    batch so every rank runs the same number of steps; without it the last global batch is filled up by
    wrapping around to the start of the epoch's order.

    Packing: ``pack_length`` with ``lengths`` and ``image_counts`` (per row); ``max_images_per_pack`` caps
    a pack's images, ``pack_window`` is the planner's window, ``visual_tokens`` (per row) balance the ranks.
    ``supervised`` (per row) lets :meth:`step_totals` give a step's supervised tokens without reading rows.
    ``build_ids`` (the manifests' config hashes) go into the state so a resume on other builds is refused.
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
        build_ids: Sequence[str | None] | None = None,
        pack_length: int | None = None,
        max_images_per_pack: int | None = None,
        pack_window: int = DEFAULT_WINDOW,
        image_counts: np.ndarray | None = None,
        visual_tokens: np.ndarray | None = None,
        supervised: np.ndarray | None = None,
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
        self.build_ids = list(build_ids) if build_ids is not None else [None] * len(self.build_sizes)
        if len(self.build_ids) != len(self.build_sizes):
            raise ParsitError(f"{len(self.build_ids)} build ids for {len(self.build_sizes)} builds")
        self.pack_length = None if pack_length is None else int(pack_length)
        self.max_images_per_pack = None if max_images_per_pack is None else int(max_images_per_pack)
        self.pack_window = int(pack_window)
        if self.pack_length is not None:
            if lengths is None or image_counts is None:
                raise ParsitError("packing needs the rows' lengths and image counts")
            if len(lengths) != self.offsets[-1] or len(image_counts) != self.offsets[-1]:
                raise ParsitError("lengths/image_counts do not have one entry per row")
        self.image_counts, self.visual_tokens, self.supervised = image_counts, visual_tokens, supervised
        self.epoch = 0
        self.consumed = 0
        self._cache: tuple[int, np.ndarray] | None = None
        self._plans: dict[int, PackPlan] = {}

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

    def epoch_plan(self, epoch: int | None = None) -> PackPlan:
        """The packs of an epoch (packing only): the same on every rank, for any world size."""
        if self.pack_length is None:
            raise ParsitError("this sampler does not pack (pack_length is None)")
        epoch = self.epoch if epoch is None else int(epoch)
        plan = self._plans.get(epoch)
        if plan is None:
            plan = plan_packs(self.epoch_order(epoch), self.lengths, self.image_counts, self.pack_length,
                              max_images=self.max_images_per_pack, window=self.pack_window,
                              rng=self._rng(epoch, 2))
            self._plans = {e: p for e, p in self._plans.items() if e == epoch - 1}  # this one and the last
            self._plans[epoch] = plan
        return plan

    def epoch_units(self, epoch: int | None = None) -> int:
        """Units (samples, or packs when packing) in an epoch."""
        return len(self.epoch_plan(epoch)) if self.pack_length is not None else len(self.epoch_order(epoch))

    def _global_batch(self, epoch: int, pos: int) -> list[list[int]] | None:
        """The ``global_batch_size`` units at ``pos`` of an epoch, as lists of dataset indices (one per unit);
        None past the epoch's end (or at its incomplete tail with drop_last)."""
        total, g = self.epoch_units(epoch), self.global_batch_size
        if pos >= total:
            return None
        units = np.arange(pos, min(total, pos + g))
        if len(units) < g:
            if self.drop_last:
                return None
            units = np.resize(np.concatenate([units, np.arange(total)]), g)  # wrap to the epoch's start
        if self.pack_length is None:
            order = self.epoch_order(epoch)
            return [[int(order[u])] for u in units]
        plan = self.epoch_plan(epoch)
        return [plan.pack(int(u)).tolist() for u in units]

    def _assign(self, epoch: int, units: list[list[int]]) -> np.ndarray:
        """[world_size, batch_size] positions into ``units``: contiguous blocks, or balanced packs."""
        n = len(units)
        if self.pack_length is None:
            return np.arange(n).reshape(self.world_size, self.batch_size)
        tokens = np.array([int(self.lengths[u].sum()) for u in units])
        visual = (np.array([int(self.visual_tokens[u].sum()) for u in units]) if self.visual_tokens is not None
                  else np.zeros(n))
        return balance(tokens, visual, self.world_size, self.batch_size)

    def step_totals(self, epoch: int, consumed: int, micro_batches: int) -> tuple[int, int, list[int]]:
        """(supervised tokens, samples with any, all sample indices) of the next ``micro_batches`` global
        batches from position (epoch, consumed), crossing into the next epoch like the loader does.

        Every rank computes the same numbers from the shards' ``supervised_tokens`` column: the denominator
        of a step's token-exact loss, with no collective.
        """
        if self.supervised is None:
            raise ParsitError("step_totals needs the rows' supervised token counts")
        indices: list[int] = []
        for _ in range(micro_batches):
            units = self._global_batch(epoch, consumed)
            if units is None:
                epoch, consumed = epoch + 1, 0
                units = self._global_batch(epoch, consumed)
                if units is None:
                    break
            indices.extend(i for u in units for i in u)
            consumed += self.global_batch_size
        sup = np.asarray(self.supervised, dtype=np.int64)[np.asarray(indices, dtype=np.int64)]
        return int(sup.sum()), int((sup > 0).sum()), indices

    # -- iteration ---------------------------------------------------------------------------------

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Batches of this rank left in the current epoch."""
        left = self.epoch_units() - self.consumed
        g = self.global_batch_size
        return max(0, left // g if self.drop_last else -(-left // g))

    def __iter__(self) -> Iterator[list]:
        epoch, pos = self.epoch, self.consumed
        if self.pack_length is None:
            order = self.epoch_order(epoch)
            g, b, total = self.global_batch_size, self.batch_size, len(order)
            while pos < total:
                chunk = order[pos : pos + g]
                if len(chunk) < g:
                    if self.drop_last:
                        return
                    chunk = np.resize(np.concatenate([chunk, order]), g)  # wrap around to the epoch's start
                yield chunk[self.rank * b : (self.rank + 1) * b].tolist()
                pos += g
            return
        while (units := self._global_batch(epoch, pos)) is not None:
            mine = self._assign(epoch, units)[self.rank]
            yield [(i, slot) for slot, u in enumerate(mine) for i in units[u]]
            pos += self.global_batch_size

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` global batches as consumed by the training loop."""
        self.consumed = min(self.epoch_units(), self.consumed + steps * self.global_batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning, unless the sampler is already in it (a resumed run)."""
        if int(epoch) != self.epoch:
            self.epoch, self.consumed = int(epoch), 0

    def end_epoch(self) -> None:
        self.epoch, self.consumed = self.epoch + 1, 0

    # -- checkpoint state --------------------------------------------------------------------------

    def position(self) -> DataPosition:
        return DataPosition(
            seed=self.seed, epoch=self.epoch, consumed_samples=self.consumed, build_sizes=list(self.build_sizes),
            weights=list(self.weights), shuffle=self.shuffle, group_by_length=self.group_by_length,
            group_size=self.group_size, build_ids=list(self.build_ids), pack_length=self.pack_length,
            max_images_per_pack=self.max_images_per_pack, pack_window=self.pack_window,
        )

    def state_dict(self) -> dict:
        return self.position().to_dict()

    def load_state_dict(self, state: dict | DataPosition) -> None:
        """Continue where ``state`` left off; refuse a state whose global order this sampler cannot recreate."""
        pos = state if isinstance(state, DataPosition) else DataPosition.from_dict(state)
        mismatches = pos.mismatches(self.position())
        if mismatches:
            raise ParsitError(
                "cannot resume the data position, the sample order would differ: " + "; ".join(mismatches)
                + " (resume with the same seed, builds, weights, grouping and packing)"
            )
        if pos.group_size != self.group_size:
            log.info("resuming with the checkpoint's group_size %s (not %s)", pos.group_size, self.group_size)
            self.group_size = pos.group_size
        self._cache = None
        self._plans = {}
        self.epoch, self.consumed = pos.epoch, pos.consumed_samples
