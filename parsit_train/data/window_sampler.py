"""A shard-local shuffle for builds read through a small cache (``data.shuffle_window_shards``).

A full shuffle of an epoch draws each batch from anywhere in the build: with a cache of 10% of the
build, nearly every step would need shards that are not cached, and shards would be fetched many times
per epoch. This order keeps the randomness that matters for training and bounds what one stretch of
steps reads:

1. the epoch's pool (each build ``weight`` times, as in :class:`ResumableBatchSampler`) is grouped by
   shard; the shards are permuted (seeded by (seed, epoch));
2. consecutive runs of ``window`` shards in that permutation form a window; the rows of a window are
   shuffled together, and the windows follow each other.

A step then reads from at most two windows (the current one and, at a boundary, the next), so a cache of
about ``2 x window`` shards (plus the fetch-ahead of the next window) reads each shard once per epoch
(``benchmarks/object_store.py``). Like the full shuffle, the order is a function of (seed, epoch) and
the data only, so a resume with another world size continues with exactly the samples not yet seen.
``group_by_length`` is not combined with it (a length-sorted chunk spans the whole build).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from parsit_data.errors import ParsitError
from parsit_train.data.sampler import ResumableBatchSampler


class ShardWindowSampler(ResumableBatchSampler):
    """:class:`ResumableBatchSampler` with the epoch order of the module doc; ``shard_rows`` in dataset order."""

    def __init__(self, build_sizes: Sequence[int], batch_size: int, *, shard_rows: Sequence[int], window: int, **kw):
        if kw.get("group_by_length"):
            raise ParsitError("data.shuffle_window_shards and data.group_by_length do not combine: choose one")
        if window < 1:
            raise ParsitError(f"data.shuffle_window_shards must be >= 1, got {window}")
        super().__init__(build_sizes, batch_size, **kw)
        self.window = int(window)
        self.shard_starts = np.concatenate([[0], np.cumsum(np.asarray(shard_rows, dtype=np.int64))])
        if int(self.shard_starts[-1]) != int(self.offsets[-1]):
            raise ParsitError("shard_rows do not add up to the builds' rows")

    def epoch_order(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        pool = self._pool(epoch)
        rng = self._rng(epoch, 1)
        shard = np.searchsorted(self.shard_starts, pool, side="right") - 1
        n_shards = len(self.shard_starts) - 1
        position = np.empty(n_shards, dtype=np.int64)
        position[rng.permutation(n_shards) if self.shuffle else np.arange(n_shards)] = np.arange(n_shards)
        window = position[shard] // self.window
        # Shuffle everything, then a stable sort by window: rows shuffled within each window.
        mixed = rng.permutation(len(pool)) if self.shuffle else np.arange(len(pool))
        order = pool[mixed][np.argsort(window[mixed], kind="stable")]
        self._cache = (epoch, order)
        return order

    def state_dict(self) -> dict:
        return {**super().state_dict(), "shuffle_window_shards": self.window}

    def load_state_dict(self, state: dict) -> None:
        if state.get("shuffle_window_shards") != self.window:
            raise ParsitError(f"cannot resume the data position: the checkpoint's shuffle_window_shards is "
                              f"{state.get('shuffle_window_shards')!r}, this run's {self.window} (the order would differ)")
        super().load_state_dict(state)
