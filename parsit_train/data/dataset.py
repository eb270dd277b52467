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
- Checksums are verified once, in the process that opens the dataset. Workers receive the dataset
  without its open shards (see ``__getstate__``) and re-map the same files lazily.
"""

from __future__ import annotations

import json
import logging
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from parsit_data.constants import (
    FORMAT_VERSION,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    MANIFEST_NAME,
    SHARD_SCHEMA,
)
from parsit_data.errors import ParsitError
from parsit_data.shards import sha256_file
from parsit_data.tokenizer import fingerprint, resolve_tokenizer_path

log = logging.getLogger(__name__)

# The columns a row needs at train time; the others (source, paths, counts) stay on disk.
_ROW_COLUMNS = ("sample_id", "input_ids", "labels", "num_image_tokens", "images", "image_sizes")


@dataclass(frozen=True)
class BuildInfo:
    """One finished build directory as the trainer sees it."""

    root: Path
    manifest: dict
    shard_paths: tuple[Path, ...]
    shard_rows: tuple[int, ...]

    @property
    def num_rows(self) -> int:
        return int(sum(self.shard_rows))

    @property
    def vision(self) -> dict | None:
        return self.manifest.get("vision")

    @property
    def pad_token_id(self) -> int:
        return int(self.manifest["tokenizer"]["pad_token_id"])


def read_manifest(root: str | Path) -> dict:
    """The manifest of a finished build, or a ParsitError that says why there is none."""
    root = Path(root)
    if not root.is_dir():
        raise ParsitError(f"build directory {root} does not exist: pass the DIR that parsit-data build wrote")
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise ParsitError(
            f"{root} has no {MANIFEST_NAME}: the build is unfinished (the manifest is written last) or this "
            "is not a build directory; run `parsit-data build` again to finish it"
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParsitError(f"cannot read {mpath}: {exc}; rebuild {root}") from exc
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ParsitError(
            f"{mpath} has format_version {version!r}, this trainer reads version {FORMAT_VERSION}: "
            "rebuild with the parsit-data of this release"
        )
    for key in ("tokenizer", "shards", "image_token_index"):
        if key not in manifest:
            raise ParsitError(f"{mpath} has no {key!r} entry: it is not a Parsit manifest; rebuild {root}")
    return manifest


def verify_build(root: Path, manifest: dict, verify_checksums: bool = True) -> BuildInfo:
    """Check that every shard the manifest lists exists with its recorded size and sha256."""
    paths, rows = [], []
    for entry in manifest["shards"]:
        path = (root / entry["path"]).resolve()
        if not path.is_relative_to(root.resolve()):
            raise ParsitError(f"{root / MANIFEST_NAME} lists shard {entry['path']!r} outside the build directory")
        if not path.is_file():
            raise ParsitError(f"shard {entry['path']} of build {root} is missing: restore it or rebuild {root}")
        size = path.stat().st_size
        if "bytes" in entry and size != int(entry["bytes"]):
            raise ParsitError(
                f"shard {entry['path']} of build {root} has {size} bytes, the manifest says {entry['bytes']}: "
                "the file is truncated or was replaced after the build; restore it or rebuild"
            )
        if verify_checksums:
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise ParsitError(
                    f"shard {entry['path']} of build {root} is corrupt: sha256 {digest[:16]}… differs from the "
                    f"manifest's {entry['sha256'][:16]}…; restore the file or rebuild {root}"
                )
        paths.append(path)
        rows.append(int(entry["rows"]))
    return BuildInfo(root=root, manifest=manifest, shard_paths=tuple(paths), shard_rows=tuple(rows))


def check_compatible(build: BuildInfo, run_fingerprint: str, run_tokenizer: str, pad_token_id: int | None) -> None:
    """Refuse a build whose tokens mean something else to this run's tokenizer or collator."""
    tok = build.manifest["tokenizer"]
    where = f"build {build.root}"
    if tok.get("sha256") != run_fingerprint:
        raise ParsitError(
            f"{where} was tokenized with a different tokenizer: manifest fingerprint "
            f"{str(tok.get('sha256'))[:16]}… ({tok.get('path')}), this run's tokenizer {run_fingerprint[:16]}… "
            f"({run_tokenizer}); rebuild with --tokenizer {run_tokenizer} or train with the build's tokenizer"
        )
    if pad_token_id is not None and int(tok["pad_token_id"]) != int(pad_token_id):
        raise ParsitError(
            f"{where} pads with id {tok['pad_token_id']} ({tok.get('pad_token')!r}), this run with id {pad_token_id}: "
            "use the build's pad token (pad_token_id=None) or rebuild with --pad-token"
        )
    if int(build.manifest["image_token_index"]) != IMAGE_TOKEN_INDEX:
        raise ParsitError(
            f"{where} marks images with id {build.manifest['image_token_index']}, this trainer expands "
            f"{IMAGE_TOKEN_INDEX}: rebuild with this release of parsit-data"
        )
    ignore = int(build.manifest.get("ignore_index", IGNORE_INDEX))
    if ignore != IGNORE_INDEX:
        raise ParsitError(f"{where} masks labels with {ignore}, this trainer with {IGNORE_INDEX}: rebuild it")


def _vision_key(vision: dict | None) -> Any:
    if not vision:
        return None
    pins = vision.get("grid_pinpoints")
    return (
        vision.get("image_size"),
        vision.get("patch_size"),
        vision.get("aspect"),
        tuple(map(tuple, pins)) if pins and vision.get("aspect") == "anyres" else None,
    )


@dataclass
class _OpenShard:
    """One memory-mapped shard: its record batches and zero-copy views of the token columns."""

    mm: mmap.mmap  # read-only shared mapping of the whole file; every Arrow buffer points into it
    batches: list[pa.RecordBatch]
    starts: np.ndarray  # first row of each record batch
    views: dict[int, tuple] = field(default_factory=dict)


def _list_view(arr: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list<int32> column as numpy arrays over the mapped buffers (no copy)."""
    return arr.values.to_numpy(zero_copy_only=True), arr.offsets.to_numpy(zero_copy_only=True)


class ShardDataset:
    """Rows of one or more builds, concatenated in the order given (index ``i`` is stable).

    ``__getitem__`` returns a dict with ``sample_id`` (str), ``input_ids`` / ``labels`` (int32 numpy copies of
    the row, -200 placeholders and -100 labels as stored), ``num_image_tokens`` (list[int]), ``image_sizes`` (list of
    (width, height), original), ``build`` (index of the build), and either ``images`` (list of encoded
    bytes) or, when an ``image_processor`` is set, ``image_crops`` (uint8 [crops, S, S, 3], resized / padded /
    cut per the manifest's geometry, normalised later by the collator) and ``crops_per_image`` (list[int]).
    """

    def __init__(
        self,
        build_dirs: list[str | Path] | str | Path,
        tokenizer_path: str | Path,
        pad_token_id: int | None = None,
        max_length: int | None = None,
        verify_checksums: bool = True,
        image_processor: Any = None,
        release_every: int = 4,
    ) -> None:
        if isinstance(build_dirs, (str, Path)):
            build_dirs = [build_dirs]
        if not build_dirs:
            raise ParsitError("no build directory given: pass at least one DIR written by parsit-data build")
        tok_folder = resolve_tokenizer_path(tokenizer_path)
        run_fp = fingerprint(tok_folder)
        self.builds: list[BuildInfo] = []
        for d in build_dirs:
            root = Path(d)
            manifest = read_manifest(root)
            build = verify_build(root, manifest, verify_checksums=verify_checksums)
            check_compatible(build, run_fp, str(tok_folder), pad_token_id)
            self.builds.append(build)
        pads = {b.pad_token_id for b in self.builds}
        if len(pads) > 1:
            raise ParsitError(f"the builds pad with different ids {sorted(pads)}: rebuild them with one --pad-token")
        self.pad_token_id: int = pads.pop()
        visions = {_vision_key(b.vision) for b in self.builds if any(b.manifest.get("vision") or {})}
        if len(visions) > 1:
            raise ParsitError(
                "the builds were made for different vision geometries "
                + "; ".join(f"{b.root}: {_vision_key(b.vision)}" for b in self.builds)
                + ": one model has one vision tower, rebuild them with the same --image-size/--patch-size/--aspect"
            )
        self.vision: dict | None = next((b.vision for b in self.builds if b.vision), None)
        self.image_processor = image_processor
        self.release_every = int(release_every)
        self._reads = 0
        self._touched: set[int] = set()

        self._paths: list[Path] = [p for b in self.builds for p in b.shard_paths]
        rows = np.array([r for b in self.builds for r in b.shard_rows], dtype=np.int64)
        self._shard_starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        per_build = np.array([b.num_rows for b in self.builds], dtype=np.int64)
        #: First global index of each build; ``build_offsets[-1] == len(self)``.
        self.build_offsets = np.concatenate([[0], np.cumsum(per_build)]).astype(np.int64)
        self._open: dict[int, _OpenShard] = {}
        self._check_rows()
        if max_length is not None:
            self._check_max_length(int(max_length))
        self.release_pages(all_shards=True)

    # -- opening -----------------------------------------------------------------------------------

    def __getstate__(self) -> dict:
        # A worker re-maps the files itself: pickling an open table would copy every row into it.
        state = dict(self.__dict__)
        state["_open"], state["_touched"] = {}, set()
        return state

    def release_pages(self, all_shards: bool = False) -> None:
        """Drop this process's page-table entries of the shards read since the last call (see module doc)."""
        for k in list(self._open) if all_shards else self._touched:
            self._open[k].mm.madvise(mmap.MADV_DONTNEED)
        self._touched.clear()

    def _shard(self, k: int) -> _OpenShard:
        shard = self._open.get(k)
        if shard is None:
            path = self._paths[k]
            try:
                with open(path, "rb") as f:
                    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                # Zero copy: the record batches' buffers are slices of the mapping.
                reader = pa.ipc.open_stream(pa.BufferReader(pa.py_buffer(mm)))
                batches = [b for b in reader if b.num_rows]
            except (OSError, ValueError, pa.ArrowInvalid) as exc:
                raise ParsitError(f"cannot read shard {path}: {exc}; restore it or rebuild") from exc
            missing = [c for c in _ROW_COLUMNS if c not in reader.schema.names]
            if missing:
                raise ParsitError(f"shard {path} lacks columns {missing}: it was not written by parsit-data {FORMAT_VERSION}")
            for name in ("input_ids", "labels"):
                if reader.schema.field(name).type != SHARD_SCHEMA.field(name).type:
                    raise ParsitError(f"shard {path}: column {name} is {reader.schema.field(name).type}, expected "
                                      f"{SHARD_SCHEMA.field(name).type}; rebuild it")
            counts = np.array([b.num_rows for b in batches], dtype=np.int64)
            shard = _OpenShard(mm=mm, batches=batches, starts=np.concatenate([[0], np.cumsum(counts)]))
            self._open[k] = shard
        return shard

    def _check_rows(self) -> None:
        for k, path in enumerate(self._paths):
            n = int(self._shard(k).starts[-1])
            want = int(self._shard_starts[k + 1] - self._shard_starts[k])
            if n != want:
                raise ParsitError(f"shard {path} has {n} rows, its manifest says {want}: rebuild it")

    def _check_max_length(self, max_length: int) -> None:
        lengths = self.lengths()
        over = np.flatnonzero(lengths > max_length)
        if over.size:
            worst = int(over[np.argmax(lengths[over])])
            raise ParsitError(
                f"{over.size} rows are longer than max_length={max_length} (longest: {int(lengths[worst])} tokens, "
                f"sample {self[worst]['sample_id']!r}); the loader never truncates a built sample (that could cut an "
                f"image's tokens): rebuild with --max-length {max_length} or raise max_length"
            )

    # -- columns for the sampler (one small numpy array, never per-row Python objects) ---------------

    def _column(self, name: str, fn) -> np.ndarray:
        parts = [fn(b.column(name)) for k in range(len(self._paths)) for b in self._shard(k).batches]
        return np.concatenate(parts) if parts else np.zeros(0)

    def lengths(self) -> np.ndarray:
        """Multimodal length of every row (int32), as the build computed it."""
        return self._column("length", lambda c: c.to_numpy(zero_copy_only=False)).astype(np.int32)

    def has_image(self) -> np.ndarray:
        """True where the row has at least one image (for grouping by modality)."""
        return self._column("num_image_tokens", lambda c: np.diff(c.offsets.to_numpy()) > 0).astype(bool)

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
        self._touched.add(k)
        self._reads += 1
        if self.release_every and self._reads % self.release_every == 0:
            self.release_pages()
        return item
