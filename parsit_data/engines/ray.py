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
same path on every node (a shared filesystem); each worker checks this when it starts.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from parsit_data.config import BuildConfig
from parsit_data.format import PARTS_DIR
from parsit_data.errors import ParsitError
from parsit_data.pipeline import Partition, PartitionResult, WorkerContext, process_partition

log = logging.getLogger(__name__)

ACTOR_CPUS = 0.5
IN_FLIGHT_PER_WORKER = 2
ACTOR_START_TIMEOUT_S = float(os.environ.get("PARSIT_RAY_START_TIMEOUT", "180"))
EMBEDDED_OBJECT_STORE_BYTES = 512 * 1024 * 1024

# Timings of the last run in this process (seconds): start-up apart from steady state, for benchmarks.
LAST_RUN: dict[str, float] = {}


def _import_ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a dependency
        raise ParsitError("--engine ray needs Ray: pip install 'ray[default]'") from exc
    return ray


class _Worker:
    """One Ray actor: a WorkerContext built once, then one partition per call."""

    def __init__(self, config_json: dict, config_hash: str, control_tokens: frozenset[str], out: str):
        # One tokenizer thread per actor: the actors are the parallelism (Rust threads would oversubscribe).
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.out = Path(out)
        if not (self.out / PARTS_DIR).is_dir():
            import socket

            raise ParsitError(
                f"the build directory {out} is not visible on Ray node {socket.gethostname()}: --out must be on "
                "a filesystem shared by every node, at the same path (see docs/RAY.md)")
        self.ctx = WorkerContext(BuildConfig.model_validate(config_json), config_hash, control_tokens)
        self.pid = os.getpid()

    def ready(self) -> int:
        return self.pid

    def cpu_seconds(self) -> float:
        """CPU time of this worker process so far (for benchmarks: work per record, whatever the load)."""
        return time.process_time()

    def process(self, part: Partition) -> PartitionResult:
        return process_partition(part, self.ctx, self.out)


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


def run(partitions: Iterable[Partition], config: BuildConfig, config_hash: str, control_tokens: frozenset[str],
        out: Path, on_result: Callable[[PartitionResult], None]) -> None:
    ray = _import_ray()
    LAST_RUN.clear()
    t0 = time.perf_counter()
    started = _init(ray, config)
    LAST_RUN["ray_init_s"] = time.perf_counter() - t0
    actors: list = []
    try:
        n = config.workers or default_workers(ray)
        worker_cls = ray.remote(_Worker)
        actors = [
            worker_cls.options(num_cpus=ACTOR_CPUS, scheduling_strategy="SPREAD", max_restarts=0,
                               name=None).remote(config.model_dump(mode="json"), config_hash, control_tokens,
                                                 str(Path(out).resolve()))
            for _ in range(n)
        ]
        _wait_ready(ray, actors)
        t1 = time.perf_counter()
        LAST_RUN["workers_ready_s"] = t1 - t0 - LAST_RUN["ray_init_s"]
        cpu0 = sum(ray.get([a.cpu_seconds.remote() for a in actors]))
        driver0 = time.process_time()
        _dispatch(ray, actors, partitions, on_result)
        LAST_RUN["steady_s"] = time.perf_counter() - t1
        LAST_RUN["driver_cpu_s"] = time.process_time() - driver0
        LAST_RUN["workers_cpu_s"] = sum(ray.get([a.cpu_seconds.remote() for a in actors])) - cpu0
    finally:
        for a in actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - best effort cleanup of an actor that may be dead already
                pass
        if started:
            ray.shutdown()


def _wait_ready(ray, actors: list) -> None:
    t0 = time.monotonic()
    refs = [a.ready.remote() for a in actors]
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=ACTOR_START_TIMEOUT_S)
    if pending:
        cpus = ray.cluster_resources().get("CPU", 0)
        raise ParsitError(
            f"Ray started only {len(ready)} of {len(actors)} workers in {ACTOR_START_TIMEOUT_S:.0f}s (the cluster "
            f"has {cpus:g} CPUs, each worker asks for {ACTOR_CPUS}): pass a smaller --workers or add nodes")
    try:
        ray.get(ready)
    except Exception as exc:  # noqa: BLE001 - a worker failed while loading: say why
        raise ParsitError(f"a Ray worker failed to start: {_cause(exc)}") from None
    log.info("%d Ray workers ready in %.1fs", len(actors), time.monotonic() - t0)


def _dispatch(ray, actors: list, partitions: Iterable[Partition], on_result) -> None:
    """Feed partitions to the least busy actor, at most IN_FLIGHT_PER_WORKER each (backpressure)."""
    load = {i: 0 for i in range(len(actors))}
    pending: dict = {}  # ref -> (actor index, partition)
    source = iter(partitions)
    exhausted = False
    while True:
        while not exhausted and len(pending) < IN_FLIGHT_PER_WORKER * len(actors):
            part = next(source, None)
            if part is None:
                exhausted = True
                break
            i = min(load, key=lambda k: (load[k], k))
            ref = actors[i].process.remote(part)
            load[i] += 1
            pending[ref] = (i, part)
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=1)
        ref = done[0]
        i, part = pending.pop(ref)
        load[i] -= 1
        try:
            result = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - RayTaskError / RayActorError: name the partition and cause
            _drain(ray, pending, on_result)
            raise ParsitError(
                f"{_describe(part)} failed on a Ray worker: {_cause(exc)}. Partitions that finished are kept: "
                "fix the cause and run the same command again to resume") from None
        on_result(result)


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
