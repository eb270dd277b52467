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
import signal
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
from parsit_train.data.video_batch import run_video_pixels

log = logging.getLogger(__name__)


def worker_seed(seed: int, rank: int, worker_id: int) -> int:
    """A 64-bit seed for one worker of one rank, well mixed (no ``seed + worker_id`` collisions)."""
    return int(np.random.SeedSequence([seed, rank, worker_id]).generate_state(1, dtype=np.uint64)[0])


def seed_worker(worker_id: int, seed: int, rank: int) -> None:
    """``worker_init_fn``: seed Python, NumPy and torch in a worker from (seed, rank, worker).

    The worker also ignores SIGTERM (on SIGINT torch's worker loop exits quietly, with code 0): torchrun
    stops a rank by signalling its whole process group, and a worker killed under its rank makes torch raise
    "DataLoader worker exited unexpectedly" in the rank, in the middle of the checkpoint it is finishing
    (:func:`parsit_train.faults.finish_before_stopping`). The worker exits with its rank (torch's watchdog
    checks the parent every few seconds) or is SIGKILLed with the run."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    s = worker_seed(seed, rank, worker_id)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


class PackedItems:
    """The dataset as the DataLoader sees it when packing: a key is ``(index, pack slot)``, and the item
    carries its slot so the collator knows which row of the batch (which pack) it belongs to."""

    def __init__(self, dataset: ShardDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, slot = key
        item = self.dataset[int(index)]
        item["pack"] = int(slot)
        return item


class ParsitLoader:
    """Iterates the DataLoader and counts each batch it hands out in the sampler's state.

    A full pass moves the sampler to the next epoch; breaking out of the loop leaves it where the last
    handed-out batch ended, which is what ``sampler.state_dict()`` then records. Each batch carries
    ``data_position``: the (epoch, consumed units) at which it starts, which the training loop uses to ask
    the sampler for a step's supervised-token total.
    """

    def __init__(
        self, dataloader: DataLoader, sampler: ResumableBatchSampler, dataset: ShardDataset | None = None
    ) -> None:
        self.dataloader = dataloader
        self.sampler = sampler
        self.dataset: ShardDataset = dataset if dataset is not None else dataloader.dataset
        #: For builds on an object store: the thread that fills the shard cache ahead of this loader.
        self.fetcher = None

    @property
    def collator(self) -> Collator:
        """The collate function (configure it, e.g. ``blank_image``, before iterating: workers copy it)."""
        return self.dataloader.collate_fn

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.dataloader:
            batch["data_position"] = (self.sampler.epoch, self.sampler.consumed)
            self.sampler.advance()
            if self.fetcher is not None:
                self.fetcher.notify()
            yield batch
        self.sampler.end_epoch()
        if self.fetcher is not None:
            self.fetcher.notify()

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        if self.fetcher is not None:
            self.fetcher.notify()


def image_processor_for(vision: dict, mean: Sequence[float] = SIGLIP_MEAN, std: Sequence[float] = SIGLIP_STD):
    """The pixel maker of a build's family: LLaVA's crops, or the anyres family's own image processor."""
    if (vision.get("family") or "llava") != "llava":
        from parsit_train.data.pixels import FamilyPixels

        return FamilyPixels(vision)
    return ImageProcessor(vision, mean=mean, std=std)


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
    pack_length: int | None = None,
    max_images_per_pack: int | None = None,
    pack_window: int | None = None,
    blank_image: tuple[int, int] | None = None,
    loss_weighting: str = "token",
    cache_dir: str | Path | None = None,
    cache_limit: int | str | None = None,
    shuffle_window_shards: int | None = None,
    default_cache_dir: str | Path | None = None,
) -> tuple[ParsitLoader, ResumableBatchSampler]:
    """Open and verify the builds and return (loader, sampler) for this rank.

    Raises ParsitError before any batch when a build is unfinished or corrupt, was made with another
    tokenizer / pad id / image token index, or holds rows longer than ``max_length``. ``pin_memory``
    None means: pin when CUDA is available.

    ``pack_length``: batch ``batch_size`` packs of up to that many tokens per rank (see
    :mod:`parsit_train.data.packing`) instead of ``batch_size`` padded samples. ``blank_image``:
    ``(image_size, visual tokens)`` of one blank image the collator appends to a batch without images (the
    trainer's ZeRO needs every rank to run the vision tower each micro-step). ``loss_weighting``: ``sample``
    makes the collator emit per-token weights 1/(the sample's supervised tokens).
    Builds given as URIs (``s3://...``) are read through a local shard cache in ``cache_dir`` of at
    most ``cache_limit`` bytes, filled ahead in this rank's order (:mod:`parsit_train.data.cache`); unset, they
    default to ``default_cache_dir`` (else the user cache dir) and a limit from the free disk (``cache_settings``).
    ``shuffle_window_shards`` shuffles within windows of that many shards instead of the whole build, so a
    small cache reads each shard once per epoch (:mod:`parsit_train.data.window_sampler`).
    """
    dirs = [build_dirs] if isinstance(build_dirs, (str, Path)) else list(build_dirs)
    probe = ShardDataset(dirs, tokenizer_path, pad_token_id=pad_token_id, max_length=max_length,
                         verify_checksums=verify_checksums, cache_dir=cache_dir, cache_limit=cache_limit, rank=rank,
                         default_cache_dir=default_cache_dir)
    vocab = int(probe.builds[0].manifest.tokenizer.vocab_size)
    if vocab and not 0 <= image_token_id < vocab:
        raise ParsitError(f"image_token_id {image_token_id} is outside the tokenizer's {vocab} ids: pass the model's "
                          "image token id (Qwen3: 151655, <|image_pad|>)")
    processor = image_processor_for(probe.vision, image_mean, image_std) if probe.vision else None
    probe.image_processor = processor
    probe.video_pixels = run_video_pixels(probe, tokenizer_path)  # None unless a row has a video
    dataset = probe
    if pack_length is not None and max_length > pack_length:
        longest = int(dataset.lengths().max()) if len(dataset) else 0
        if longest > pack_length:
            raise ParsitError(f"the builds hold samples of up to {longest} tokens, over data.pack_length="
                              f"{pack_length}: "
                              "packing never splits a sample; raise pack_length or rebuild with --max-length")
    packing = pack_length is not None
    sampler_cls, window = ResumableBatchSampler, {}
    if shuffle_window_shards is not None:
        from parsit_train.data.window_sampler import ShardWindowSampler

        sampler_cls = ShardWindowSampler
        window = {"shard_rows": [r for b in dataset.builds for r in b.shard_rows], "window": shuffle_window_shards}
    sampler = sampler_cls(
        [b.num_rows for b in dataset.builds],
        batch_size,
        weights=weights,
        seed=seed,
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
        group_by_length=group_by_length,
        lengths=dataset.lengths() if group_by_length or packing else None,
        has_image=dataset.has_image() if group_by_length else None,
        group_size=group_size,
        drop_last=drop_last,
        build_ids=[b.manifest.config_hash for b in dataset.builds],
        pack_length=pack_length,
        max_images_per_pack=max_images_per_pack,
        image_counts=dataset.image_counts() if packing else None,
        visual_tokens=dataset.visual_tokens() if packing else None,
        supervised=dataset.supervised_tokens(),
        **({"pack_window": pack_window} if pack_window else {}),
        **window,
    )
    collator = Collator(
        dataset.pad_token_id, image_token_id, max_length,
        image_processor=processor,
        pad_to_multiple_of=pad_to_multiple_of,
        pack_length=pack_length,
        blank_image=blank_image,
        loss_weighting=loss_weighting,
        video_processor=probe.video_pixels,
    )
    workers = dict(
        worker_init_fn=functools.partial(seed_worker, seed=seed, rank=rank),
        prefetch_factor=prefetch_factor,
        persistent_workers=persistent_workers,
    ) if num_workers > 0 else {}
    generator = torch.Generator().manual_seed(worker_seed(seed, rank, 2**32 - 1))  # main-process stream
    loader = DataLoader(
        PackedItems(dataset) if packing else dataset,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        generator=generator,
        **workers,
    )
    log.info("data: %d rows in %d build(s), %d batches of %d %s per rank this epoch, %d workers",
             len(dataset), len(dataset.builds), len(sampler), batch_size,
             f"packs of {pack_length} tokens" if packing else "samples", num_workers)
    parsit_loader = ParsitLoader(loader, sampler, dataset)
    if dataset.cache is not None:
        from parsit_train.data.cache import ShardFetcher

        parsit_loader.fetcher = ShardFetcher(dataset.cache, sampler, dataset._shard_starts).start()
        log.info("data: shard cache %s, limit %d bytes; opening fetched %d bytes", dataset.cache.dir,
                 dataset.cache.limit, dataset.cache_stats["fetched_bytes"])
    return parsit_loader, sampler
