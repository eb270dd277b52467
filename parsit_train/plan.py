"""What packing would do to a build: token utilisation padded, length-grouped and packed (``parsit-train plan``).

Reads only the shards' ``length`` and image-count columns (no row is decoded), runs the same sampler and
planner the trainer runs for epoch 0, and reports real tokens / computed positions for each strategy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parsit_data.errors import ParsitError
from parsit_train.data.dataset import ShardDataset
from parsit_train.data.packing import DEFAULT_WINDOW, packed_utilisation, padded_utilisation, plan_packs
from parsit_train.data.sampler import ResumableBatchSampler


@dataclass(frozen=True)
class PlanReport:
    rows: int
    samples: int  # in the epoch (weights applied)
    tokens: int
    micro_batch_size: int
    pack_length: int
    padded: float
    grouped: float
    packed: float
    packs: int
    samples_per_pack: float
    plan_seconds: float

    def lines(self) -> list[str]:
        return [
            f"{self.rows} rows, {self.samples} samples an epoch, {self.tokens} tokens",
            f"token utilisation (real tokens / positions computed), micro-batch {self.micro_batch_size}:",
            f"  padded          {self.padded:.3f}",
            f"  length-grouped  {self.grouped:.3f}",
            f"  packed at {self.pack_length:<5} {self.packed:.3f}  ({self.packs} packs, "
            f"{self.samples_per_pack:.1f} samples a pack, planned in {self.plan_seconds:.2f} s)",
        ]


def plan_report(
    builds: list[str | Path],
    *,
    micro_batch_size: int,
    pack_length: int,
    weights: list[float] | None = None,
    tokenizer: str | Path = "qwen3",
    max_images_per_pack: int | None = None,
    window: int = DEFAULT_WINDOW,
    seed: int = 0,
) -> PlanReport:
    if micro_batch_size < 1 or pack_length < 1:
        raise ParsitError("--micro-batch-size and --pack-length must be positive")
    ds = ShardDataset(list(builds), tokenizer, verify_checksums=False)
    lengths, counts = ds.lengths(), ds.image_counts()
    sizes = [b.num_rows for b in ds.builds]
    kw = dict(weights=weights, seed=seed, lengths=lengths, has_image=counts > 0)
    order = ResumableBatchSampler(sizes, micro_batch_size, **kw).epoch_order(0)
    grouped = ResumableBatchSampler(sizes, micro_batch_size, group_by_length=True, **kw).epoch_order(0)
    t = time.perf_counter()
    plan = plan_packs(order, lengths, counts, pack_length, max_images=max_images_per_pack, window=window,
                      rng=np.random.default_rng(seed))
    dt = time.perf_counter() - t
    return PlanReport(
        rows=len(ds), samples=len(order), tokens=int(lengths[order].sum()), micro_batch_size=micro_batch_size,
        pack_length=pack_length, padded=padded_utilisation(lengths[order], micro_batch_size),
        grouped=padded_utilisation(lengths[grouped], micro_batch_size), packed=packed_utilisation(plan, pack_length),
        packs=len(plan), samples_per_pack=len(order) / max(1, len(plan)), plan_seconds=dt,
    )
