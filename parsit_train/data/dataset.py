"""A map-style dataset over finished Parsit builds: verified on open, read zero-copy.

Why it looks like this:

- Every shard is memory-mapped (``mmap`` + the Arrow IPC *stream* reader over it), so a row is a view into
  the page cache. No per-row Python object is ever built for the whole dataset: what a worker holds is a
  handful of Arrow buffers and one small offsets array per shard, whatever the number of rows.
- A build is refused before the first step, never halfway through an epoch: a DIR without
  ``manifest.json`` (unfinished), a shard whose size or sha256 differs from the manifest (flipped byte,
  truncated copy), a tokenizer fingerprint, pad id, image token index or ignore index that differs from
  the run's, builds with different vision geometry, rows longer than the run's ``max_length``.
- Reading a mapped row makes the kernel map ~64 KiB around each touched page into the process
  ("fault-around"), so a worker reading random rows would, over an epoch, map the whole dataset and its
  RSS would grow with dataset size although those pages are the shared, reclaimable page cache. Every
  ``release_every`` rows the worker drops the page-table entries of the shards it touched
  (``MADV_DONTNEED`` on a read-only shared file mapping: the data stays in the page cache, a later read
  maps it again with a minor fault), which keeps per-worker RSS flat whatever the dataset size.
- Opening and verifying a build (its manifest read once per rank) is the rank's build view
  (:mod:`parsit_train.data.view`, over :func:`parsit_data.format.open_build`, the one reader of the format);
  this module maps the view's shards and adds the ``max_length`` check.
- Checksums are verified once, in the process that opens the dataset. Workers receive the dataset
  without its open shards (see ``__getstate__``) and re-map the same files lazily.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from parsit_data.errors import ParsitError
from parsit_data.format import Build, MappedShard, map_shard
from parsit_data.format.fsio import RemotePath
from parsit_train.data.video_batch import run_video_pixels, video_item, video_tokens
from parsit_train.data.view import BuildView, open_view

log = logging.getLogger(__name__)

#: Shards of an object-store build a process keeps mapped (an evicted cache file frees its disk space only
#: once no process maps it; a batch of the shard-window order spans a few shards).
MAX_MAPPED_CACHED = 8


@dataclass
class _OpenShard:
    """One memory-mapped shard (:func:`parsit_data.format.map_shard`) and zero-copy views of its token columns."""

    mapped: MappedShard
    views: dict[int, tuple] = field(default_factory=dict)

    @property
    def batches(self) -> list[pa.RecordBatch]:
        return self.mapped.batches

    @property
    def starts(self) -> np.ndarray:
        return self.mapped.starts


def _list_view(arr: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list<int32> column as numpy arrays over the mapped buffers (no copy)."""
    return arr.values.to_numpy(zero_copy_only=True), arr.offsets.to_numpy(zero_copy_only=True)


def _list_sums(arr: pa.ListArray) -> np.ndarray:
    """Sum of each list of a list<int32> column."""
    offsets = arr.offsets.to_numpy()
    values = np.concatenate([[0], np.cumsum(arr.values.to_numpy(zero_copy_only=False), dtype=np.int64)])
    return values[offsets[1:]] - values[offsets[:-1]]


class ShardDataset:
    """Rows of one or more builds, concatenated in the order given (index ``i`` is stable).

    ``__getitem__`` returns a dict with ``sample_id`` (str), ``input_ids`` / ``labels`` (int32 numpy copies of
    the row, -200 placeholders and -100 labels as stored), ``num_image_tokens`` (list[int]), ``image_sizes`` (list of
    (width, height), original), ``build`` (index of the build), and either ``images`` (list of encoded
    bytes) or, when an ``image_processor`` is set, ``image_crops`` (uint8 [crops, S, S, 3], resized / padded /
    cut per the manifest's geometry, normalised later by the collator; float32 patches from a processor
    folder's image processor) and ``crops_per_image`` (list[int]).

    ``builds``: the rank's :class:`parsit_train.data.view.BuildView` (the trainer: manifests already read,
    ``max_length`` the view's), or build directories that are opened here with the other arguments (tools
    and tests). The image processor is given at construction (the trainer never sets it afterwards). Video
    rows (OneVision): the video pixels come from the view's video entry when a row has a video, and an item
    carries its decoded frames (``video``, uint8 ``[frames, 3, H, W]``); ``decode_video=False`` (tools,
    parity tests) gives the stored JPEGs (``video_frames``) instead.
    """

    def __init__(
        self,
        builds: BuildView | list[str | Path] | str | Path,
        tokenizer_path: str | Path | None = None,
        pad_token_id: int | None = None,
        max_length: int | None = None,
        verify_checksums: bool = True,
        image_processor: Any = None,
        release_every: int = 4,
        cache_dir: str | Path | None = None,
        cache_limit: int | str | None = None,
        rank: int = 0,
        default_cache_dir: str | Path | None = None,
        decode_video: bool = True,
    ) -> None:
        if isinstance(builds, BuildView):  # the trainer's way: the rank's view, manifests already read
            view = builds
            check_rows = max_length if max_length is not None else view.max_length
        else:  # a convenience for tools and tests: open the builds here
            if tokenizer_path is None:
                raise ParsitError("ShardDataset of build directories needs the run's tokenizer_path")
            view = open_view(builds, tokenizer_path, pad_token_id=pad_token_id, verify_checksums=verify_checksums,
                             cache_dir=cache_dir, cache_limit=cache_limit, default_cache_dir=default_cache_dir)
            check_rows = max_length
        self.view = view
        self.builds: list[Build] = list(view.builds)
        self.pad_token_id: int = view.pad_token_id
        self.vision: dict | None = view.vision
        self.image_processor = image_processor
        self.release_every = int(release_every)
        self._reads = 0
        self._touched: set[int] = set()

        #: (build, shard within it) of every shard, in order.
        self._shards: list[tuple[int, int]] = [(i, k) for i, b in enumerate(self.builds) for k in range(len(b.shard_paths))]
        self._paths: list[Path] = [p for b in self.builds for p in b.shard_paths]
        rows = np.array([r for b in self.builds for r in b.shard_rows], dtype=np.int64)
        self._shard_starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        per_build = np.array([b.num_rows for b in self.builds], dtype=np.int64)
        #: First global index of each build; ``build_offsets[-1] == len(self)``.
        self.build_offsets = np.concatenate([[0], np.cumsum(per_build)]).astype(np.int64)
        self._open: dict[int, _OpenShard] = {}
        #: Builds on an object store: their shards come through a local cache (parsit_train.data.cache).
        self.cache = self._open_cache(view.cache_dir, view.cache_limit, rank, verify_checksums, view.default_cache_dir)
        for k in range(len(self._paths)):
            if self.cache is not None:  # rows from the shard's index, made when it arrived verified
                n, want = len(self.cache.index(k)["length"]), int(self._shard_starts[k + 1] - self._shard_starts[k])
                if n != want:
                    raise ParsitError(f"shard {self._paths[k]} has {n} rows, its manifest says {want}: rebuild it")
            else:
                self._shard(k)  # maps it and checks its row count against the manifest
        #: The run's VideoPixels from the view's video entry (None unless a row has a video): decodes a
        #: row's frames in ``__getitem__`` (parsit_train.data.video_batch.video_item).
        self.video_pixels = run_video_pixels(self) if decode_video else None
        if check_rows is not None:
            self._check_max_length(int(check_rows))
        self.release_pages(all_shards=True)

    # -- opening -----------------------------------------------------------------------------------

    def __getstate__(self) -> dict:
        # A worker re-maps the files itself: pickling an open table would copy every row into it.
        state = dict(self.__dict__)
        state["_open"], state["_touched"] = {}, set()
        return state

    def _open_cache(self, cache_dir, cache_limit, rank: int, verify: bool, default_dir):
        remote = [isinstance(p, RemotePath) for p in self._paths]
        if not any(remote):
            return None
        from parsit_train.data.cache import RemoteShard, ShardCache, cache_settings, prepare

        if not all(remote):
            raise ParsitError("a run reads either local builds or builds on an object store, not both (yet): "
                              "copy the local builds to the store or the remote ones to disk")
        shards = [RemoteShard(p, e.path, int(e.rows), int(e.bytes), e.sha256)
                  for b in self.builds for p, e in zip(b.shard_paths, b.manifest.shards, strict=True)]
        folder, limit, self.cache_note = cache_settings(cache_dir, cache_limit, [s.bytes for s in shards], rank,
                                                        default_dir)
        log.info("data: %s", self.cache_note)
        cache = ShardCache(folder, shards, limit, rank)
        self.cache_stats = prepare(cache, verify_warm=verify)
        return cache

    def release_pages(self, all_shards: bool = False) -> None:
        """Drop this process's page-table entries of the shards read since the last call (see module doc)."""
        for k in list(self._open) if all_shards else self._touched & self._open.keys():
            self._open[k].mapped.release()
        self._touched.clear()

    def _shard(self, k: int) -> _OpenShard:
        shard = self._open.get(k)
        if shard is None:
            b, j = self._shards[k]
            if self.cache is not None:
                mapped = map_shard(self.cache.wait(k))  # a verified local copy
                while len(self._open) >= MAX_MAPPED_CACHED:  # evicted files free their disk once unmapped
                    self._open.pop(next(iter(self._open)))
                shard = _OpenShard(mapped)
            else:
                shard = _OpenShard(self.builds[b].map_shard(j))
            self._open[k] = shard
        return shard

    def _check_max_length(self, max_length: int) -> None:
        lengths = self.lengths()
        over = np.flatnonzero(lengths > max_length)
        if over.size:
            worst = int(over[np.argmax(lengths[over])])
            if self.cache is not None:
                k = int(np.searchsorted(self._shard_starts, worst, side="right") - 1)
                sid = str(self.cache.index(k)["sample_id"][worst - int(self._shard_starts[k])])
            else:
                sid = self[worst]["sample_id"]
            raise ParsitError(
                f"{over.size} rows are longer than max_length={max_length} (longest: {int(lengths[worst])} tokens, "
                f"sample {sid!r}); the loader never truncates a built sample (that could cut an "
                f"image's tokens): rebuild with --max-length {max_length} or raise max_length"
            )

    # -- columns for the sampler (one small numpy array, never per-row Python objects) ---------------

    def _column(self, name: str, fn) -> np.ndarray:
        if self.cache is not None:  # from the shards' index files (the shards themselves may not be cached)
            parts = [fn(self.cache.index_table(k).column(name).combine_chunks()) for k in range(len(self._paths))]
            return np.concatenate(parts) if parts else np.zeros(0)
        parts = [fn(b.column(name)) for k in range(len(self._paths)) for b in self._shard(k).batches]
        return np.concatenate(parts) if parts else np.zeros(0)

    def _indexed(self, name: str) -> np.ndarray:
        return np.concatenate([self.cache.index(k)[name] for k in range(len(self._paths))] or [np.zeros(0)])

    def lengths(self) -> np.ndarray:
        """Multimodal length of every row (int32), as the build computed it."""
        if self.cache is not None:
            return self._indexed("length").astype(np.int32)
        return self._column("length", lambda c: c.to_numpy(zero_copy_only=False)).astype(np.int32)

    def has_image(self) -> np.ndarray:
        """True where the row has at least one image (for grouping by modality)."""
        if self.cache is not None:
            return self._indexed("has_image").astype(bool)
        return self._column("num_image_tokens", lambda c: np.diff(c.offsets.to_numpy()) > 0).astype(bool)

    def image_counts(self) -> np.ndarray:
        """Images of every row (int64), for the packing plan's image cap."""
        return self._column("num_image_tokens", lambda c: np.diff(c.offsets.to_numpy())).astype(np.int64)

    def visual_tokens(self) -> np.ndarray:
        """Visual tokens of every row (int64; images and video), for balancing the vision tower's work across ranks."""
        return self._column("num_image_tokens", _list_sums).astype(np.int64) + video_tokens(self)

    def supervised_tokens(self) -> np.ndarray:
        """Supervised tokens of every row (int64): the denominators of the token-exact loss."""
        return self._column("supervised_tokens", lambda c: c.to_numpy(zero_copy_only=False)).astype(np.int64)

    # -- rows --------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._shard_starts[-1])

    def locate(self, index: int) -> tuple[int, int, int]:
        """(shard, record batch, row in batch) of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        k = int(np.searchsorted(self._shard_starts, index, side="right") - 1)
        shard = self._shard(k)
        local = index - int(self._shard_starts[k])
        j = int(np.searchsorted(shard.starts, local, side="right") - 1)
        return k, j, local - int(shard.starts[j])

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        k, j, r = self.locate(index)
        shard = self._shard(k)
        batch = shard.batches[j]
        views = shard.views.get(j)
        if views is None:
            views = (_list_view(batch.column("input_ids")), _list_view(batch.column("labels")))
            shard.views[j] = views
        (ids, ids_off), (lab, lab_off) = views
        n_tok = batch.column("num_image_tokens")[r].values.to_pylist()
        sizes = [(s["width"], s["height"]) for s in batch.column("image_sizes")[r].values.to_pylist()]
        item = {
            "sample_id": batch.column("sample_id")[r].as_py(),
            "build": int(np.searchsorted(self.build_offsets, index, side="right") - 1),
            # Copies of one row (a few KiB): the item must not point into pages released below.
            "input_ids": ids[ids_off[r] : ids_off[r + 1]].copy(),
            "labels": lab[lab_off[r] : lab_off[r + 1]].copy(),
            "num_image_tokens": n_tok,
            "image_sizes": sizes,
        }
        images = batch.column("images")[r].values.to_pylist() if n_tok else []
        if len(images) != len(n_tok):
            raise ParsitError(
                f"sample {item['sample_id']!r} in {self._paths[k]} has {len(n_tok)} image placeholders but "
                f"{len(images)} embedded images: rebuild with images embedded"
            )
        if self.image_processor is not None:
            crops, counts = self.image_processor.decode_crops(images, sizes, item["sample_id"])
            item["image_crops"], item["crops_per_image"] = crops, counts
        else:
            item["images"] = images
        item.update(video_item(batch, r, item["input_ids"], self.video_pixels, item["sample_id"]))
        self._touched.add(k)
        self._reads += 1
        if self.release_every and self._reads % self.release_every == 0:
            self.release_pages()
        return item
