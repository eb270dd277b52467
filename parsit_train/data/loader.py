"""The DataLoader factory: from the rank's build view and the run's config sections to a resumable stream of
typed batches (torchtune's recipe ``_setup_data`` is the model: config in, loader out, nothing changed after).

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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from parsit_data.errors import ParsitError
from parsit_train.config import DataConfig, DataLoaderConfig
from parsit_train.data.batch import Batch
from parsit_train.data.collator import Collator
from parsit_train.data.dataset import ShardDataset
from parsit_train.data.images import ImageProcessor
from parsit_train.data.sampler import ResumableBatchSampler
from parsit_train.data.view import BuildView

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
    the sampler for a step's supervised-token total. ``fetcher``: for builds on an object store, the thread
    that fills the shard cache ahead of this loader.
    """

    def __init__(self, dataloader: DataLoader, sampler: ResumableBatchSampler, dataset: ShardDataset,
                 fetcher=None) -> None:
        self.dataloader = dataloader
        self.sampler = sampler
        self.dataset = dataset
        self.fetcher = fetcher

    @property
    def collator(self) -> Collator:
        """The collate function (frozen: complete when the loader was built)."""
        return self.dataloader.collate_fn

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.dataloader:
            batch = batch.replace(data_position=(self.sampler.epoch, self.sampler.consumed))
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


@dataclass(frozen=True)
class BatchSpec:
    """What one rank's batches are: how many samples (or packs) each, the model's image token id, the loss
    weighting, the stream's seed and this rank's place in it; ``blank_image``: a batch without images gets
    the family's blank image (the trainer's ZeRO needs every rank to run the vision tower each micro-step).
    ``shuffle`` / ``drop_last`` / ``group_size`` / ``pad_to_multiple_of``: the sampler's and collator's
    defaults suit training; tests and benchmarks change them."""

    batch_size: int
    image_token_id: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    loss_weighting: Literal["token", "sample"] = "token"
    blank_image: bool = False
    shuffle: bool = True
    drop_last: bool = True
    group_size: int | None = None
    pad_to_multiple_of: int | None = None
    video_token_id: int | None = None  # OneVision: what the collator expands a video's -201 sentinel to


def image_processor_for(vision: dict | None):
    """The pixel maker of a build: the anyres family's image processor, a ``LlavaProcessor`` folder's own
    image processor, or (plain LLaVA built without a processor folder) LLaVA's crops with SigLIP mean/std."""
    if not vision:
        return None
    from parsit_train.data.pixels import FamilyPixels, ProcessorPixels

    if (vision.get("family") or "llava") != "llava":
        return FamilyPixels(vision)
    if vision.get("image_processor"):
        return ProcessorPixels(vision)
    return ImageProcessor(vision)


def check_video_token(videos, video_token_id: int | None) -> None:
    """The builds hold videos: the collator's ``video_token_id`` (the model's, from the build view) must be
    the build's video token in the run's tokenizer (the export's processor expands that token)."""
    built = videos.video_token_id
    if video_token_id is None:
        raise ParsitError("the builds hold videos but the run has no video token id: train a LLaVA-OneVision model "
                          "from a build made with a OneVision --processor (its video token gives the id)"
                          + (f"; or set model.video_token_id: {built}" if built is not None else ""))
    if built is not None and int(built) != int(video_token_id):
        raise ParsitError(f"the model's video_token_id is {video_token_id}, but the build's video token "
                          f"{videos.video_token!r} is id {built} in this tokenizer (the export's processor expands "
                          f"that token): set model.video_token_id: {built}")


def build_dataloader(view: BuildView, data: DataConfig, workers: DataLoaderConfig, spec: BatchSpec) -> ParsitLoader:
    """This rank's loader over the builds of ``view`` (opened once: :func:`parsit_train.data.view.open_view`).

    ``data``: the run's ``data`` section (grouping, packing, the shard-window shuffle; its builds and weights
    are the view's). ``workers``: the ``dataloader`` section. ``spec``: :class:`BatchSpec`. Every object is
    complete when constructed (dataset with its image and video processors, sampler, collator with its blank
    image, its video token id and, when a row has a video and ``spec.blank_image``, its blank video); none is
    changed after. Raises ParsitError before any batch when the builds' rows exceed
    ``data.pack_length`` or the image token id is not a vocabulary id.
    """
    vocab = view.vocab_size
    if vocab and not 0 <= spec.image_token_id < vocab:
        raise ParsitError(f"image_token_id {spec.image_token_id} is outside the tokenizer's {vocab} ids: pass the "
                          "model's image token id (Qwen3: 151655, <|image_pad|>)")
    processor = image_processor_for(view.vision)
    dataset = ShardDataset(view, image_processor=processor, rank=spec.rank)
    pack_length = data.pack_length
    packing = pack_length is not None
    if packing and view.max_length > pack_length:
        longest = int(dataset.lengths().max()) if len(dataset) else 0
        if longest > pack_length:
            raise ParsitError(f"the builds hold samples of up to {longest} tokens, over data.pack_length="
                              f"{pack_length}: "
                              "packing never splits a sample; raise pack_length or rebuild with --max-length")
    sampler_cls, window = ResumableBatchSampler, {}
    if data.shuffle_window_shards is not None:
        from parsit_train.data.window_sampler import ShardWindowSampler

        sampler_cls = ShardWindowSampler
        window = {"shard_rows": view.shard_rows, "window": data.shuffle_window_shards}
    group = data.group_by_length
    sampler = sampler_cls(
        view.build_rows,
        spec.batch_size,
        weights=list(view.weights),
        seed=spec.seed,
        rank=spec.rank,
        world_size=spec.world_size,
        shuffle=spec.shuffle,
        group_by_length=group,
        lengths=dataset.lengths() if group or packing else None,
        has_image=dataset.has_image() if group else None,
        group_size=spec.group_size,
        drop_last=spec.drop_last,
        build_ids=view.build_ids,
        pack_length=pack_length,
        max_images_per_pack=data.max_images_per_pack,
        image_counts=dataset.image_counts() if packing else None,
        visual_tokens=dataset.visual_tokens() if packing else None,
        supervised=dataset.supervised_tokens(),
        pack_window=data.pack_window,
        **window,
    )
    blank = (view.geometry.image_size, view.blank_image_tokens()) if spec.blank_image and view.vision else None
    videos = dataset.video_pixels  # the view's video entry; None unless a row has a video
    if videos is not None:
        check_video_token(videos, spec.video_token_id)
    collator = Collator(
        view.pad_token_id, spec.image_token_id, view.max_length,
        image_processor=processor,
        pad_to_multiple_of=spec.pad_to_multiple_of,
        pack_length=pack_length,
        blank_image=blank,
        loss_weighting=spec.loss_weighting,
        video_token_id=spec.video_token_id,
        video_processor=videos,
        blank_video=spec.blank_image and videos is not None,
    )
    n = workers.num_workers
    extra = dict(
        worker_init_fn=functools.partial(seed_worker, seed=spec.seed, rank=spec.rank),
        prefetch_factor=workers.prefetch_factor,
        persistent_workers=workers.persistent_workers,
    ) if n > 0 else {}
    generator = torch.Generator().manual_seed(worker_seed(spec.seed, spec.rank, 2**32 - 1))  # main-process stream
    loader = DataLoader(
        PackedItems(dataset) if packing else dataset,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=n,
        pin_memory=torch.cuda.is_available() if workers.pin_memory is None else workers.pin_memory,
        generator=generator,
        **extra,
    )
    log.info("data: %d rows in %d build(s), %d batches of %d %s per rank this epoch, %d workers",
             len(dataset), len(view.builds), len(sampler), spec.batch_size,
             f"packs of {pack_length} tokens" if packing else "samples", n)
    fetcher = None
    if dataset.cache is not None:
        from parsit_train.data.cache import ShardFetcher

        fetcher = ShardFetcher(dataset.cache, sampler, dataset._shard_starts).start()
        log.info("data: shard cache %s, limit %d bytes; opening fetched %d bytes", dataset.cache.dir,
                 dataset.cache.limit, dataset.cache_stats["fetched_bytes"])
    return ParsitLoader(loader, sampler, dataset, fetcher)
