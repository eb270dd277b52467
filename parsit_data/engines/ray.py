"""The Ray engine: the same :func:`process_partition` as the local engine, on a pool of Ray actors.

Why actors: each actor builds one :class:`WorkerContext` (tokenizer, template, options) when it starts
and reuses it for every partition it is given, so the tokenizer loads once per worker, not per record
or per partition.

Why the driver streams: the build driver reads the sources and assigns duplicate ids centrally (that
needs the whole build), then hands partitions out one at a time. At most ``IN_FLIGHT_PER_WORKER``
partitions per actor are submitted and not yet finished (backpressure), so the driver's and the object
store's memory stay bounded by ``workers x shard_rows`` records whatever the input size.

Why fractional CPUs: on a 2-CPU machine an actor pool that claims every CPU starves anything else that
needs a CPU slot (Ray Data read tasks, a job's own tasks) and the build hangs; each actor asks for
``ACTOR_CPUS`` (half a CPU) and actors are spread over nodes. If the cluster cannot place the pool at
all, the build stops with a clear error after ``ACTOR_START_TIMEOUT_S`` instead of waiting forever.

Output: workers write their shard, quarantine part and part file under ``out`` themselves, exactly as
the local engine does, so ``out`` (and the image root and a tokenizer folder) must be visible at the
same path on every node (a shared filesystem), or be a URI (``s3://...``) that every worker opens
itself with its node's credentials (docs/RAY.md); each worker checks this when it starts.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from parsit_data.commit import PartitionResult
from parsit_data.config import BuildConfig
from parsit_data.format import build_files
from parsit_data.errors import ParsitError
from parsit_data.partition import Partition
from parsit_data.pipeline import process_partition
from parsit_data.worker import WorkerContext, WorkerSpec
from parsit_data.format.fsio import RemotePath, location

log = logging.getLogger(__name__)

ACTOR_CPUS = 0.5
IN_FLIGHT_PER_WORKER = 2
ACTOR_START_TIMEOUT_S = float(os.environ.get("PARSIT_RAY_START_TIMEOUT", "180"))
EMBEDDED_OBJECT_STORE_BYTES = 512 * 1024 * 1024

#: Attempts per partition when its worker is lost (the first one and the retries), and the first backoff
#: (doubled each retry, at most 10 s).
MAX_ATTEMPTS = int(os.environ.get("PARSIT_RAY_MAX_ATTEMPTS", "4"))
RETRY_BACKOFF_S = float(os.environ.get("PARSIT_RAY_RETRY_BACKOFF", "0.5"))

# Timings of the last run in this process (seconds): start-up apart from steady state, for benchmarks;
# also its retries and replaced workers.
LAST_RUN: dict[str, float] = {}
#: Process ids of the last run's first workers (tests and benchmarks kill one to test fault tolerance).
WORKER_PIDS: list[int] = []


def _import_ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a dependency
        raise ParsitError("--engine ray needs Ray: pip install 'ray[default]'") from exc
    return ray


class _Worker:
    """One Ray actor: a WorkerContext built once, then one partition per call."""

    def __init__(self, spec: WorkerSpec):
        # One tokenizer thread per actor: the actors are the parallelism (Rust threads would oversubscribe).
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        # A URI (s3://...): each worker opens the store itself, with its node's credentials.
        out = location(spec.out, "--out")
        if isinstance(out, RemotePath):
            out.exists()  # fails here, at start, when this node cannot reach the store
        elif not build_files(out).parts.is_dir():
            import socket

            raise ParsitError(
                f"the build directory {out} is not visible on Ray node {socket.gethostname()}: --out must be on "
                "a filesystem shared by every node, at the same path (see docs/RAY.md)")
        self.ctx = WorkerContext(spec)
        self.pid = os.getpid()

    def ready(self) -> int:
        return self.pid

    def cpu_seconds(self) -> float:
        """CPU time of this worker process so far (for benchmarks: work per record, whatever the load)."""
        return time.process_time()

    def process(self, part: Partition) -> PartitionResult:
        return process_partition(part, self.ctx)


def _describe(part: Partition) -> str:
    if not part.items:
        return f"partition {part.index} (source {part.source!r}, empty)"
    first, last = part.items[0], part.items[-1]
    unit = "lines" if first.kind == "line" else "elements"
    return f"partition {part.index} (source {part.source!r}, {unit} {first.position}-{last.position})"


_RAISED = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", re.M)


def _cause(exc: BaseException) -> str:
    """The worker's own exception, not Ray's wrapper around it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip()
    # An actor that failed in __init__: Ray's message embeds the worker's traceback; its last
    # "SomeError: message" line is the cause.
    raised = _RAISED.findall(text)
    if raised:
        name, msg = raised[-1]
        return f"{name.rsplit('.', 1)[-1]}: {msg}"
    # Ray's own errors (an actor killed for memory, a lost node) say what happened on their first line.
    lines = text.splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def default_workers(ray) -> int:
    """One worker per CPU of the cluster (an embedded Ray: this machine)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _init(ray, config: BuildConfig) -> bool:
    """Connect to or start Ray. Returns True when this call started Ray (and must shut it down)."""
    if ray.is_initialized():
        return False
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address:
        # --ray-address, or the RAY_ADDRESS that `ray job submit` gives its entrypoint: join the cluster.
        log.info("joining Ray cluster at %s", address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ParsitError(f"cannot join the Ray cluster at {address}: {exc}. Start one with "
                              "`ray start --head` or leave out --ray-address to run Ray embedded") from exc
        return True
    cpus = max(os.cpu_count() or 1, math.ceil((config.workers or 1) * ACTOR_CPUS))
    log.info("starting Ray embedded with %d CPUs", cpus)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             object_store_memory=EMBEDDED_OBJECT_STORE_BYTES, namespace="parsit")
    return True


class _Pool:
    """The actors, each slot with a generation: a lost actor is replaced by a fresh one in its slot.

    Results from the dead actor's other tasks fail too; the generation tells them apart from failures
    of its replacement, so one loss replaces one actor.
    """

    def __init__(self, ray, n: int, args: tuple):
        self.ray, self.args = ray, args
        self.cls = ray.remote(_Worker)
        self.actors = [self._spawn() for _ in range(n)]
        self.generation = [0] * n
        self.load = [0] * n
        self.replaced = 0

    def _spawn(self):
        return self.cls.options(num_cpus=ACTOR_CPUS, scheduling_strategy="SPREAD", max_restarts=0).remote(*self.args)

    def replace(self, slot: int) -> None:
        try:
            self.ray.kill(self.actors[slot])
        except Exception:  # noqa: BLE001 - best effort: the actor is dead already
            pass
        self.actors[slot] = self._spawn()
        self.generation[slot] += 1
        self.replaced += 1

    def kill_all(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - best effort cleanup of an actor that may be dead already
                pass


def run(partitions: Iterable[Partition], spec: WorkerSpec, on_result: Callable[[PartitionResult], None]) -> None:
    ray = _import_ray()
    config = spec.config
    LAST_RUN.clear()
    WORKER_PIDS.clear()
    t0 = time.perf_counter()
    started = _init(ray, config)
    LAST_RUN["ray_init_s"] = time.perf_counter() - t0
    pool = None
    try:
        n = config.workers or default_workers(ray)
        out = spec.out
        where = str(out) if isinstance(out, RemotePath) else Path(out).resolve()  # a URI: each worker opens it
        pool = _Pool(ray, n, (replace(spec, out=where),))
        WORKER_PIDS.extend(_wait_ready(ray, pool.actors))
        t1 = time.perf_counter()
        LAST_RUN["workers_ready_s"] = t1 - t0 - LAST_RUN["ray_init_s"]
        cpu0 = sum(ray.get([a.cpu_seconds.remote() for a in pool.actors]))
        driver0 = time.process_time()
        _dispatch(ray, pool, partitions, on_result)
        LAST_RUN["steady_s"] = time.perf_counter() - t1
        LAST_RUN["driver_cpu_s"] = time.process_time() - driver0
        LAST_RUN["workers_replaced"] = pool.replaced
        if not pool.replaced:  # (a replaced worker took its CPU time with it)
            LAST_RUN["workers_cpu_s"] = sum(ray.get([a.cpu_seconds.remote() for a in pool.actors])) - cpu0
    finally:
        if pool is not None:
            pool.kill_all()
        if started:
            ray.shutdown()


def _wait_ready(ray, actors: list) -> list[int]:
    """Wait for every actor to load; their process ids."""
    t0 = time.monotonic()
    refs = [a.ready.remote() for a in actors]
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=ACTOR_START_TIMEOUT_S)
    if pending:
        cpus = ray.cluster_resources().get("CPU", 0)
        raise ParsitError(
            f"Ray started only {len(ready)} of {len(actors)} workers in {ACTOR_START_TIMEOUT_S:.0f}s (the cluster "
            f"has {cpus:g} CPUs, each worker asks for {ACTOR_CPUS}): pass a smaller --workers or add nodes")
    try:
        pids = ray.get(refs)
    except Exception as exc:  # noqa: BLE001 - a worker failed while loading (its own error, or Ray's): say why
        raise _start_failure(exc) from None
    log.info("%d Ray workers ready in %.1fs", len(actors), time.monotonic() - t0)
    return pids


def _start_failure(exc: BaseException) -> BaseException:
    """A worker that raised while starting: a ParsitError stays one line (e.g. the build directory is not
    shared with its node); anything else is a bug and keeps the worker's traceback (Ray passes it as text)."""
    cause = _cause(exc)
    if cause.startswith("ParsitError: "):
        return ParsitError(f"a Ray worker failed to start: {cause.removeprefix('ParsitError: ')}")
    if getattr(exc, "_actor_init_failed", False):
        err = RuntimeError(f"a Ray worker failed to start: {cause}")
        err.add_note(f"The worker's error:\n{str(exc).rstrip()}")
        return err
    return ParsitError(f"a Ray worker failed to start: {cause}")  # Ray's own (a node lost while starting)


def _lost_errors(ray) -> tuple[type[BaseException], ...]:
    """What Ray raises when the worker, not the work, failed: the process or its node is gone."""
    e = ray.exceptions
    return (e.RayActorError, e.WorkerCrashedError, e.NodeDiedError, e.ObjectLostError, e.LocalRayletDiedError,
            e.OutOfMemoryError)


def _backoff(attempt: int) -> float:
    return min(RETRY_BACKOFF_S * 2 ** (attempt - 1), 10.0)


def _dispatch(ray, pool: _Pool, partitions: Iterable[Partition], on_result) -> None:
    """Feed partitions to the least busy actor, at most IN_FLIGHT_PER_WORKER each (backpressure).

    A partition whose worker was lost is given again (its lost worker replaced) after a backoff, up to
    MAX_ATTEMPTS times in all, before new partitions, and *alone* on an idle worker: a partition that kills
    its worker then fails by itself, and the partitions that happened to share the first worker with it
    do not use up their attempts. An exception
    the work raised is not retried: it is a bug or the user's problem, and is raised as the worker's own.
    """
    lost = _lost_errors(ray)
    pending: dict = {}  # ref -> (slot, generation, partition, attempt)
    retry: list[tuple[float, int, Partition, int]] = []  # (due, partition index, partition, attempt)
    source = iter(partitions)
    exhausted = False
    LAST_RUN["retries"] = 0
    solo: set[int] = set()  # slots running a retried partition alone (so a second loss is pinned to it)
    while True:
        now = time.monotonic()
        blocked = False  # a retry is due but no worker is idle: new work waits, so that one drains
        while len(pending) < IN_FLIGHT_PER_WORKER * len(pool.actors):
            free = [k for k in range(len(pool.actors)) if k not in solo]
            if retry and retry[0][0] <= now:
                idle = [k for k in free if pool.load[k] == 0]
                if not idle:
                    blocked = True
                    break
                _, _, part, attempt = retry.pop(0)
                slot = idle[0]
                solo.add(slot)
            elif not exhausted and free:
                part, attempt = next(source, None), 1
                if part is None:
                    exhausted = True
                    continue
                slot = min(free, key=lambda k: (pool.load[k], k))
            else:
                break
            pending[pool.actors[slot].process.remote(part)] = (slot, pool.generation[slot], part, attempt)
            pool.load[slot] += 1
        if not pending and not retry:
            return
        timeout = max(0.0, retry[0][0] - now) if retry and not blocked else None
        if not pending:
            time.sleep(timeout or 0.0)
            continue
        done, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
        if not done:
            continue  # a retry is due
        ref = done[0]
        slot, generation, part, attempt = pending.pop(ref)
        pool.load[slot] -= 1
        if attempt > 1 and generation == pool.generation[slot]:
            solo.discard(slot)
        try:
            result = ray.get(ref)
        except lost as exc:
            if getattr(exc, "_actor_init_failed", False):  # not lost: the fresh worker raised while starting
                _drain(ray, pending, on_result)
                raise _start_failure(exc) from None
            if generation == pool.generation[slot]:
                solo.discard(slot)
                log.warning("Ray worker %d was lost (%s): starting another", slot, _cause(exc))
                pool.replace(slot)
            if attempt >= MAX_ATTEMPTS:
                _drain(ray, pending, on_result)
                raise ParsitError(
                    f"{_describe(part)} was lost with its Ray worker {attempt} times; last cause: {_cause(exc)}. "
                    "Partitions that finished are kept: run the same command again to resume") from None
            log.warning("%s: its worker was lost (%s); attempt %d of %d in %.1fs", _describe(part), _cause(exc),
                        attempt + 1, MAX_ATTEMPTS, _backoff(attempt))
            LAST_RUN["retries"] += 1
            retry.append((time.monotonic() + _backoff(attempt), part.index, part, attempt + 1))
            retry.sort(key=lambda r: (r[0], r[1]))
            continue
        except ray.exceptions.RayTaskError as exc:
            _drain(ray, pending, on_result)
            raise _worker_exception(exc, part) from None
        on_result(result)


def _worker_exception(exc, part: Partition) -> BaseException:
    """The exception the worker raised, as the local engine would raise it: its own type, with the
    worker's traceback and the partition attached as notes; a ParsitError stays one line."""
    cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
    if isinstance(cause, ParsitError):
        return ParsitError(f"{_describe(part)} failed on a Ray worker: {cause}")
    if cause is None:  # not picklable: Ray's wrapper, which is an instance of the worker's exception type
        return exc
    # str() of Ray's wrapper is the worker's traceback ("ray::_Worker.process() (pid=..., ip=...)" first)
    cause.add_note(f"raised on a Ray worker while building {_describe(part)}; partitions that finished are "
                   f"kept. The worker's traceback:\n{str(exc).rstrip()}")
    return cause


def _drain(ray, pending: dict, on_result, timeout_s: float = 60.0) -> None:
    """After a failure, let partitions already running finish (they are reused by the next run)."""
    if not pending:
        return
    done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    for ref in done:
        try:
            on_result(ray.get(ref))
        except Exception:  # noqa: BLE001 - only the first failure is reported
            pass
