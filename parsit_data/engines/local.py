"""The in-process engine: one worker context, partitions processed in order (pipelined in chunks)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from parsit_data.commit import PartitionResult
from parsit_data.partition import Partition
from parsit_data.pipeline import process_partitions
from parsit_data.worker import WorkerContext, WorkerSpec


def run(partitions: Iterable[Partition], spec: WorkerSpec, on_result: Callable[[PartitionResult], None]) -> None:
    ctx = WorkerContext(spec)
    try:
        for result in process_partitions(partitions, ctx):
            on_result(result)
    finally:
        ctx.close()
