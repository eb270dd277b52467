"""Training from a build on object storage (``s3://...``): a bounded local cache of verified shards,
fetched ahead in exactly the order this rank's sampler will read them.

How it works:

- Opening: :func:`parsit_data.format.open_build` reads the manifest from the store and checks that every
  shard it lists exists with its recorded size (one listing). The trainer needs each row's length and modality before the first step (the
  ``max_length`` check, ``group_by_length``); they are kept in a small index file per shard in the cache
  (``index/<sha256>.arrow``), made the first time the shard arrives. A cold cache therefore reads the build
  once at start; a warm one not at all.
- The plan: the sampler's global order is a function of (seed, epoch), so the shards this rank reads
  next, and when, are known. :class:`ShardFetcher` (a thread of the process that owns the sampler)
  walks that plan from the sampler's current position (the current epoch and the next one) and fetches
  the first shard that is not in the cache, while there is room.
- Eviction: to make room it evicts the cached shard whose next use is the furthest away (never used
  again first), but never one that is needed before the shard it is about to fetch: when only such
  shards are cached, it waits for the reader to move on. The shards of one batch are needed together,
  so the limit must hold the largest batch's shards (checked for each epoch's plan: a ParsitError, not
  a stall). Shards needed soon are never evicted; with a
  cache of 10% of the build and a shard-ordered plan every shard is fetched at most once per epoch
  (``benchmarks/object_store.py`` measures it).
- Arrival: a shard is downloaded to a temporary name, its size and sha256 checked against the manifest,
  then renamed to ``<sha256>.arrow``: a reader (a DataLoader worker, another process) only ever sees
  verified, complete files. A mismatch is fetched again (a damaged transfer), then refused as a
  ParsitError (the store holds other bytes than the manifest says: rebuild). A throttling or failing
  store (HTTP 503, SlowDown, a dropped connection) is retried with backoff and counted
  (:data:`parsit_data.format.fsio.RETRIES`, :attr:`ShardFetcher.stats`, logged): never a corrupt sample.
- Readers (:meth:`ShardCache.wait`) wait for the file to appear; an error of the fetcher reaches them
  as an ``<sha256>.error`` file, so a worker process fails with the fetcher's message.

Each rank has its own subfolder of ``data.cache_dir`` (``rank-N``) and its own ``data.cache_limit``:
ranks on one node do not share (and cannot evict each other's) shards; a node with 8 ranks needs 8
times the limit on its disk.

Defaults (:func:`cache_settings`), as other loaders pick them: without ``data.cache_dir`` the cache is
``shard-cache`` under the run's ``output_dir`` (a resumed run finds it warm; two runs never evict each
other's shards), or the user cache dir (``$XDG_CACHE_HOME/parsit/shards``, else ``~/.cache/parsit/shards``)
for a caller that has no output folder. Without ``data.cache_limit`` the limit is the build's size, but at
most half the disk's free space (plus what the folder already holds) shared by the node's ranks
(``LOCAL_WORLD_SIZE``). Explicit settings are kept as given; the log line says which applied.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from parsit_data.errors import ParsitError
from parsit_data.format import INDEX_COLUMNS, read_index_file, read_shard_index, write_index_file
from parsit_data.format.fsio import RETRIES, RemotePath, retrying

log = logging.getLogger(__name__)

WAIT_TIMEOUT_S = float(os.environ.get("PARSIT_CACHE_WAIT_S", "900"))
VERIFY_ATTEMPTS = 3
RESCAN_S = 10.0  # how often the fetcher lists its cache folder again (it tracks what it fetched and evicted)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20, "g": 1e9,
          "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_size(value: int | str) -> int:
    """``10GiB``, ``500 MB``, ``2e9`` or an int: bytes."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ParsitError(f"data.cache_limit {value!r}: write a size such as 20GiB, 500MB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


DISK_SHARE = 0.5  # of the free disk a default cache_limit may take (the rest: checkpoints, logs, the system)


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "parsit" / "shards"


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def cache_settings(cache_dir: str | Path | None, cache_limit: int | str | None, shard_bytes: list[int],
                   rank: int = 0, default_dir: str | Path | None = None) -> tuple[Path, int, str]:
    """(folder, limit in bytes, a sentence saying where they come from) of a rank's shard cache.

    ``default_dir`` is the caller's choice when ``cache_dir`` is None (the trainer: ``output_dir/shard-cache``);
    without it, :func:`user_cache_dir`. A None ``cache_limit`` is the build's size, capped at
    :data:`DISK_SHARE` of the free disk under the folder (plus this rank's cached shards) per local rank.
    """
    if cache_dir is not None:
        folder, where = Path(cache_dir).expanduser(), "data.cache_dir"
    elif default_dir is not None:
        folder, where = Path(default_dir).expanduser(), "default: data.cache_dir unset, under output_dir"
    else:
        folder, where = user_cache_dir(), "default: data.cache_dir unset, the user cache dir"
    if cache_limit is not None:
        limit = parse_size(cache_limit)
        return folder, limit, f"shard cache {folder} ({where}), limit {_gib(limit)} (data.cache_limit)"
    mine = folder.expanduser().resolve() / f"rank-{rank}"
    mine.mkdir(parents=True, exist_ok=True)
    held = sum(p.stat().st_size for p in mine.glob("*.arrow"))
    free = shutil.disk_usage(mine).free
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    allowed = int((free + held) * DISK_SHARE / ranks)
    build = sum(shard_bytes)
    limit = min(build, allowed)
    biggest = max(shard_bytes, default=0)
    if limit < 2 * biggest:
        raise ParsitError(f"the shard cache {mine} has {_gib(free)} free on its disk, {_gib(allowed)} for this rank "
                          f"({DISK_SHARE:.0%} shared by {ranks} local rank(s)), less than two shards "
                          f"({_gib(2 * biggest)}): set data.cache_dir to a larger disk or data.cache_limit")
    how = ("the whole build" if limit == build else
           f"{DISK_SHARE:.0%} of {_gib(free + held)} free / {ranks} local rank(s), the build is {_gib(build)}")
    return folder, limit, (f"shard cache {folder} ({where}), limit {_gib(limit)} "
                           f"(default: data.cache_limit unset, {how})")


@dataclass(frozen=True)
class RemoteShard:
    """One shard of a remote build as its manifest lists it."""

    obj: RemotePath
    rel: str
    rows: int
    bytes: int
    sha256: str


class ShardCache:
    """Where the verified local copies of remote shards live (picklable: DataLoader workers get one).

    ``shards[k]`` is the dataset's shard ``k``. :meth:`wait` is what a reader calls; the fetching is
    done by a :class:`ShardFetcher` in the process that owns the sampler.
    """

    def __init__(self, cache_dir: str | Path, shards: list[RemoteShard], limit_bytes: int, rank: int = 0):
        self.dir = Path(cache_dir).expanduser().resolve() / f"rank-{rank}"
        (self.dir / "index").mkdir(parents=True, exist_ok=True)
        self.shards = shards
        self.limit = int(limit_bytes)
        biggest = max((s.bytes for s in shards), default=0)
        if self.limit < 2 * biggest:
            raise ParsitError(f"data.cache_limit {self.limit} bytes is too small: the cache must hold at least two "
                              f"shards (the largest is {biggest} bytes) to read one while the next arrives")

    def local_path(self, k: int) -> Path:
        return self.dir / f"{self.shards[k].sha256}.arrow"

    def _error_path(self, k: int) -> Path:
        return self.dir / f"{self.shards[k].sha256}.error"

    def wait(self, k: int, timeout_s: float = WAIT_TIMEOUT_S) -> Path:
        """The local path of shard ``k`` once it is in the cache and verified."""
        path, err = self.local_path(k), self._error_path(k)
        deadline = time.monotonic() + timeout_s
        delay = 0.001
        while not path.exists():
            if err.exists():
                raise ParsitError(err.read_text(encoding="utf-8"))
            if time.monotonic() > deadline:
                raise ParsitError(f"shard {self.shards[k].rel} did not reach the cache {self.dir} in {timeout_s:.0f}s: "
                                  "is the fetcher running (a loader built by build_dataloader)?")
            time.sleep(delay)
            delay = min(0.02, delay * 2)
        return path

    # -- the index: lengths and modality of every row, per shard ------------------------------------

    #: The columns the trainer needs of every row before the first step (the format's shard index).
    INDEX_COLUMNS = INDEX_COLUMNS

    def _index_path(self, k: int) -> Path:
        return self.dir / "index" / f"{self.shards[k].sha256}.arrow"

    def index_table(self, k: int) -> pa.Table:
        """The small columns of shard ``k`` (:data:`INDEX_COLUMNS`), from its index file."""
        return read_index_file(self._index_path(k))

    def index(self, k: int) -> dict[str, np.ndarray]:
        t = self.index_table(k)
        offsets = t.column("num_image_tokens").combine_chunks().offsets.to_numpy() if t.num_rows else np.zeros(1)
        return {"length": t.column("length").to_numpy().astype(np.int32), "has_image": np.diff(offsets) > 0,
                "sample_id": np.array(t.column("sample_id").to_pylist(), dtype=object)}

    def write_index(self, k: int, path: Path) -> None:
        write_index_file(read_shard_index(path, self.INDEX_COLUMNS), self._index_path(k))

    def has_index(self, k: int) -> bool:
        return self._index_path(k).exists()

    # -- arrival -----------------------------------------------------------------------------------

    def fetch(self, k: int, stats: dict) -> Path:
        """Download shard ``k``, verify size and sha256, publish it under its final name."""
        shard = self.shards[k]
        for attempt in range(1, VERIFY_ATTEMPTS + 1):
            tmp = self.dir / f".{shard.sha256}.{uuid.uuid4().hex}.part"
            try:
                size, digest = retrying(f"fetch {shard.obj}", _download, shard.obj, tmp)
                stats["fetched_bytes"] += size
                stats["fetches"] += 1
                if size == shard.bytes and digest == shard.sha256:
                    os.replace(tmp, self.local_path(k))
                    return self.local_path(k)
                stats["verify_failures"] += 1
                log.warning("shard %s arrived with %d bytes, sha256 %s…; the manifest says %d bytes, %s… "
                            "(attempt %d of %d)", shard.rel, size, digest[:12], shard.bytes, shard.sha256[:12],
                            attempt, VERIFY_ATTEMPTS)
            finally:
                tmp.unlink(missing_ok=True)
        raise ParsitError(f"shard {shard.obj} does not match the build's manifest (size or sha256) after "
                          f"{VERIFY_ATTEMPTS} downloads: the store holds other bytes than the build wrote; rebuild it")

    def resident(self) -> dict[int, int]:
        """Shards in the cache now: {k: bytes}."""
        by_sha = {s.sha256: k for k, s in enumerate(self.shards)}
        out = {}
        for p in self.dir.glob("*.arrow"):
            k = by_sha.get(p.stem)
            if k is not None:
                out[k] = p.stat().st_size
        return out


def _download(obj: RemotePath, tmp: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with obj.open() as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 22):
            h.update(chunk)
            dst.write(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def prepare(cache: ShardCache, verify_warm: bool = True) -> dict:
    """Before the first step: check the shards already cached (a warm cache) and make every shard's index.

    A shard without an index is fetched (cold cache: the build is read once, each shard kept while
    there is room, the first shards first). Returns the statistics of this pass.
    """
    stats = new_stats()
    resident = cache.resident()
    for k in sorted(resident):
        if verify_warm:
            path = cache.local_path(k)
            digest = _sha256_local(path)
            if digest != cache.shards[k].sha256:  # damaged on the local disk: drop it, fetch again
                log.warning("cached shard %s is damaged (sha256 differs): fetching it again", cache.shards[k].rel)
                path.unlink(missing_ok=True)
                del resident[k]
                continue
        if not cache.has_index(k):
            cache.write_index(k, cache.local_path(k))
    used = sum(resident.values())
    for k, shard in enumerate(cache.shards):
        if cache.has_index(k):
            continue
        path = cache.fetch(k, stats)
        cache.write_index(k, path)
        if used + shard.bytes <= cache.limit // 2:  # keep the start of the build; leave room for the plan
            used += shard.bytes
        else:
            path.unlink()
            stats["evictions"] += 1
    return stats


def _sha256_local(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def new_stats() -> dict:
    return {"fetched_bytes": 0, "fetches": 0, "evictions": 0, "verify_failures": 0, "waits": 0}


class ShardFetcher:
    """Fetches shards ahead of the reader in the order of ``sampler``'s plan (a thread; see module doc).

    ``shard_of`` maps dataset indices to dataset shard indices (``np.searchsorted`` over shard starts).
    """

    def __init__(self, cache: ShardCache, sampler, shard_starts: np.ndarray, poll_s: float = 0.05):
        self.cache, self.sampler = cache, sampler
        self.shard_starts = np.asarray(shard_starts)
        self.poll_s = poll_s
        self.stats = new_stats()
        self.epoch_bytes: dict[int, int] = {}
        self._plans: dict[int, tuple[list[int], dict[int, list[int]]]] = {}
        self._stop = threading.Event()
        #: Set by :meth:`notify` (the loader handed out a batch while this thread waited for room) and by stop.
        self._wake = threading.Event()
        self._hungry = False  # a shard is due but there is no room until the reader moves on
        self._thread = threading.Thread(target=self._run, name="parsit-shard-fetcher", daemon=True)
        self.error: BaseException | None = None
        self._logged_epoch = -1
        #: What this rank's cache folder holds, {k: bytes}: kept here (this thread is its only writer) rather
        #: than listed on every step; listed again every RESCAN_S in case files were removed under it.
        self._resident = cache.resident()
        self._scanned = time.monotonic()

    # -- the plan ----------------------------------------------------------------------------------

    def _plan(self, epoch: int) -> tuple[list[int], dict[int, list[int]]]:
        """(steps, uses): ``uses[k]`` the sorted steps of ``epoch`` at which this rank reads shard ``k``."""
        plan = self._plans.get(epoch)
        if plan is None:
            # The rank's batches exactly as the sampler will yield them (samples, or packs when packing):
            # a copy at the epoch's start with its own order cache; the training loop's sampler is untouched.
            probe = copy.copy(self.sampler)
            probe._cache, probe._plans = None, {}
            probe.epoch, probe.consumed = int(epoch), 0
            r = probe.rank
            uses: dict[int, list[int]] = {}
            steps = 0
            for s, batch in enumerate(probe):
                idx = np.asarray([i[0] if isinstance(i, tuple) else i for i in batch], dtype=np.int64)
                ks = [int(k) for k in np.unique(np.searchsorted(self.shard_starts, idx, side="right") - 1)]
                step_bytes = sum(self.cache.shards[k].bytes for k in ks)
                if step_bytes > self.cache.limit:
                    # One batch must fit whole: its shards are all needed at the same step.
                    raise ParsitError(
                        f"data.cache_limit {self.cache.limit} bytes is too small: step {s} of epoch {epoch} reads "
                        f"{len(ks)} shards ({step_bytes} bytes) on rank {r}; raise the limit (or use fewer, smaller "
                        "shards per batch)")
                for k in ks:
                    uses.setdefault(k, []).append(s)
                steps = s + 1
            plan = (list(range(steps)), uses)
            self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}
            self._plans[epoch] = plan
        return plan

    def _position(self) -> tuple[int, int]:
        """(epoch, step) of the next batch the training loop will receive."""
        s = self.sampler
        return int(s.epoch), int(s.consumed) // s.global_batch_size

    def next_uses(self) -> dict[int, float]:
        """For every shard read from now on (this epoch and the next): how many steps until its next use."""
        epoch, step = self._position()
        out: dict[int, float] = {}
        base = 0
        for e in (epoch, epoch + 1):
            steps, uses = self._plan(e)
            start = step if e == epoch else 0
            for k, at in uses.items():
                if k in out:
                    continue
                i = bisect.bisect_left(at, start)
                if i < len(at):
                    out[k] = base + at[i] - start
            base += len(steps) - start
        return out

    # -- the thread --------------------------------------------------------------------------------

    def start(self) -> "ShardFetcher":
        self.next_uses()  # the plan of this epoch now: a cache too small for one batch is an error before step 1
        self._thread.start()
        return self

    def notify(self) -> None:
        """The reader moved on (a batch was handed out). Wakes the thread only when it waits for that (no
        room until the reader passes a cached shard's last use): waking it on every batch would cost the
        training loop a GIL hand-off per batch (about 0.5 ms here). Otherwise it looks again every poll_s."""
        if self._hungry:
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.clear()
                if not self._step():
                    # Nothing to fetch now, or no room until the reader moves on (then a notify wakes it):
                    # sleep at most poll_s.
                    self._wake.wait(self.poll_s)
        except BaseException as exc:  # noqa: BLE001 - handed to every reader through the error files
            self.error = exc
            msg = str(exc) if isinstance(exc, ParsitError) else f"the shard fetcher failed: {type(exc).__name__}: {exc}"
            log.error("%s", msg)
            for k in range(len(self.cache.shards)):
                self.cache._error_path(k).write_text(msg, encoding="utf-8")

    def _step(self) -> bool:
        """Fetch one shard if the plan needs one and there is (or can be made) room. True if it did."""
        if time.monotonic() - self._scanned > RESCAN_S:
            self._resident, self._scanned = self.cache.resident(), time.monotonic()
        resident = self._resident
        if len(resident) == len(self.cache.shards):
            self._hungry = False
            return False  # the whole build is cached (a warm cache): nothing to plan
        upcoming = self.next_uses()
        missing = sorted((d, k) for k, d in upcoming.items() if k not in resident)
        if not missing:
            self._hungry = False
            return False
        due, target = missing[0]
        need = self.cache.shards[target].bytes
        used = sum(resident.values())
        # Evict the shards whose next use is furthest (never again first), only if later than the target's.
        victims = sorted(resident, key=lambda k: -upcoming.get(k, float("inf")))
        for k in victims:
            if used + need <= self.cache.limit:
                break
            if upcoming.get(k, float("inf")) <= due:
                break  # everything left is needed before the target: wait for the reader to move on
            self.cache.local_path(k).unlink(missing_ok=True)
            self.stats["evictions"] += 1
            used -= resident.pop(k)  # self._resident: the same dict
        self._hungry = used + need > self.cache.limit
        if self._hungry:
            self.stats["waits"] += 1
            return False
        before = self.stats["fetched_bytes"]
        epoch, step = self._position()
        if due >= len(self._plan(epoch)[0]) - step:
            epoch += 1  # fetched ahead for the next epoch: counted there
        path = self.cache.fetch(target, self.stats)
        resident[target] = self.cache.shards[target].bytes
        if not self.cache.has_index(target):
            self.cache.write_index(target, path)
        self.epoch_bytes[epoch] = self.epoch_bytes.get(epoch, 0) + self.stats["fetched_bytes"] - before
        if epoch > self._logged_epoch + 1:  # the previous epoch's fetches are all done: say what they cost
            self._logged_epoch = epoch - 1
            log.info("shard cache: epoch %d fetched %d bytes; totals %s", epoch - 1,
                     self.epoch_bytes.get(epoch - 1, 0), self.report())
        return True

    def report(self) -> dict:
        return {**self.stats, "retries": dict(RETRIES), "epoch_bytes": dict(self.epoch_bytes)}
