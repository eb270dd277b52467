"""The in-process engine: one worker context, partitions processed in order (pipelined in chunks)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from parsit_data.config import BuildConfig
from parsit_data.pipeline import Partition, PartitionResult, WorkerContext, process_partitions


def run(partitions: Iterable[Partition], config: BuildConfig, config_hash: str, control_tokens: frozenset[str],
        out: Path, on_result: Callable[[PartitionResult], None]) -> None:
    ctx = WorkerContext(config, config_hash, control_tokens)
    for result in process_partitions(partitions, ctx, out):
        on_result(result)
