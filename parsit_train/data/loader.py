"""The DataLoader factory: one call from build directories to a resumable stream of batches.

What upstream LLaVA code lost and this keeps: workers seeded per (seed, rank, worker) so any random
choice in a worker is reproducible and differs between workers; ``prefetch_factor`` and persistent
workers so the GPU is not waiting on an epoch boundary; pinned memory only where there is CUDA; and a
data position that is exactly the batches the training loop received (not the ones prefetched).
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from parsit_data.errors import ParsitError
from parsit_train.data.collator import Collator
from parsit_train.data.dataset import ShardDataset
from parsit_train.data.images import SIGLIP_MEAN, SIGLIP_STD, ImageProcessor
from parsit_train.data.sampler import ResumableBatchSampler

log = logging.getLogger(__name__)


def worker_seed(seed: int, rank: int, worker_id: int) -> int:
    """A 64-bit seed for one worker of one rank, well mixed (no ``seed + worker_id`` collisions)."""
    return int(np.random.SeedSequence([seed, rank, worker_id]).generate_state(1, dtype=np.uint64)[0])


def seed_worker(worker_id: int, seed: int, rank: int) -> None:
    """``worker_init_fn``: seed Python, NumPy and torch in a worker from (seed, rank, worker)."""
    s = worker_seed(seed, rank, worker_id)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


class ParsitLoader:
    """Iterates the DataLoader and counts each batch it hands out in the sampler's state.

    A full pass moves the sampler to the next epoch; breaking out of the loop leaves it where the last
    handed-out batch ended, which is what ``sampler.state_dict()`` then records.
    """

    def __init__(self, dataloader: DataLoader, sampler: ResumableBatchSampler) -> None:
        self.dataloader = dataloader
        self.sampler = sampler
        self.dataset: ShardDataset = dataloader.dataset

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.dataloader:
            self.sampler.advance()
            yield batch
        self.sampler.end_epoch()

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def build_dataloader(
    build_dirs: Sequence[str | Path] | str | Path,
    weights: Sequence[float] | None = None,
    *,
    tokenizer_path: str | Path,
    image_token_id: int,
    batch_size: int,
    max_length: int,
    pad_token_id: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 2,
    group_by_length: bool = False,
    group_size: int | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    prefetch_factor: int = 4,
    persistent_workers: bool = True,
    pin_memory: bool | None = None,
    image_mean: Sequence[float] = SIGLIP_MEAN,
    image_std: Sequence[float] = SIGLIP_STD,
    verify_checksums: bool = True,
    pad_to_multiple_of: int | None = None,
) -> tuple[ParsitLoader, ResumableBatchSampler]:
    """Open and verify the builds and return (loader, sampler) for this rank.

    Raises ParsitError before any batch when a build is unfinished or corrupt, was made with another
    tokenizer / pad id / image token index, or holds rows longer than ``max_length``. ``pin_memory``
    None means: pin when CUDA is available.
    """
    dirs = [build_dirs] if isinstance(build_dirs, (str, Path)) else list(build_dirs)
    probe = ShardDataset(dirs, tokenizer_path, pad_token_id=pad_token_id, max_length=max_length,
                         verify_checksums=verify_checksums)
    vocab = int(probe.builds[0].manifest.tokenizer.vocab_size)
    if vocab and not 0 <= image_token_id < vocab:
        raise ParsitError(f"image_token_id {image_token_id} is outside the tokenizer's {vocab} ids: pass the model's "
                          "image token id (Qwen3: 151655, <|image_pad|>)")
    processor = ImageProcessor(probe.vision, mean=image_mean, std=image_std) if probe.vision else None
    probe.image_processor = processor
    dataset = probe
    sampler = ResumableBatchSampler(
        [b.num_rows for b in dataset.builds],
        batch_size,
        weights=weights,
        seed=seed,
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
        group_by_length=group_by_length,
        lengths=dataset.lengths() if group_by_length else None,
        has_image=dataset.has_image() if group_by_length else None,
        group_size=group_size,
        drop_last=drop_last,
    )
    collator = Collator(
        dataset.pad_token_id, image_token_id, max_length,
        image_processor=processor,
        pad_to_multiple_of=pad_to_multiple_of,
    )
    workers = dict(
        worker_init_fn=functools.partial(seed_worker, seed=seed, rank=rank),
        prefetch_factor=prefetch_factor,
        persistent_workers=persistent_workers,
    ) if num_workers > 0 else {}
    generator = torch.Generator().manual_seed(worker_seed(seed, rank, 2**32 - 1))  # main-process stream
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        generator=generator,
        **workers,
    )
    log.info("data: %d rows in %d build(s), %d batches of %d per rank this epoch, %d workers",
             len(dataset), len(dataset.builds), len(sampler), batch_size, num_workers)
    return ParsitLoader(loader, sampler), sampler
