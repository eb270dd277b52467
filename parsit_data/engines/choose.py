"""The engine choice, made once per build: ``--engine local|ray``, or ``auto``: Ray where it pays for its start-up, the in-process engine everywhere else.

Starting Ray embedded costs seconds (10-20 s on a loaded 2-core machine: ``ray.init`` plus each worker
loading the tokenizer); a 2-core machine can at best halve a build. So Ray is chosen when:

- a cluster is named (``--ray-address``, or ``RAY_ADDRESS``, which ``ray job submit`` sets for its
  entrypoint): the user asked for Ray;
- or the inputs are large (at least ``AUTO_RAY_BYTES``, about 60k LLaVA-style text records, roughly a
  minute of single-core work) and this machine has more than one CPU.

Otherwise the local engine runs: for small builds and tests it is faster and has no moving parts.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from parsit_data.config import BuildConfig
from parsit_data.engines import Engine
from parsit_data.errors import ParsitError
from parsit_data.sources import SourceSpec

AUTO_RAY_BYTES = 64 * 1024 * 1024


class EngineChoice(NamedTuple):
    name: str  # "local" or "ray"
    why: str  # the reason, for the log

    def load(self) -> Engine:
        """The engine's ``run``."""
        if self.name == "local":
            from parsit_data.engines import local

            return local.run
        if self.name == "ray":
            try:
                from parsit_data.engines import ray as ray_engine
            except ImportError as exc:
                raise ParsitError(f"--engine ray is not available: {exc}") from exc
            return ray_engine.run
        raise ParsitError(f"unknown engine {self.name!r}: choose local or ray")


def choose_engine(config: BuildConfig, specs: list[SourceSpec]) -> EngineChoice:
    """The engine ``config.engine`` names, or for ``auto`` the one that pays, with the reason."""
    if config.engine != "auto":
        return EngineChoice(config.engine, f"--engine {config.engine}")
    if config.ray_address:
        return EngineChoice("ray", f"--ray-address {config.ray_address}")
    if os.environ.get("RAY_ADDRESS"):
        return EngineChoice("ray", f"RAY_ADDRESS={os.environ['RAY_ADDRESS']} (running as a Ray job or on a cluster)")
    size = sum(s.nbytes for s in specs)
    cpus = os.cpu_count() or 1
    if cpus < 2:
        return EngineChoice("local", "one CPU: Ray cannot run anything in parallel here")
    if size < AUTO_RAY_BYTES:
        return EngineChoice("local", f"inputs are {size / 2**20:.1f} MiB (< {AUTO_RAY_BYTES // 2**20} MiB): "
                                     "Ray's start-up would cost more than it saves")
    try:
        import ray  # noqa: F401
    except ImportError:
        return EngineChoice("local", "Ray is not installed")
    return EngineChoice("ray", f"inputs are {size / 2**20:.0f} MiB on {cpus} CPUs")
