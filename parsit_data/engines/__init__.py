"""Engines map :func:`parsit_data.pipeline.process_partitions` over partitions.

An engine is an :class:`Engine`: ``run(partitions, spec, on_result)``, where ``spec`` is the one
:class:`~parsit_data.worker.WorkerSpec` of the build. It must call ``on_result`` once per partition
(order free) and raise on a worker failure. :func:`parsit_data.engines.choose.choose_engine` picks one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from parsit_data.commit import PartitionResult
from parsit_data.partition import Partition
from parsit_data.worker import WorkerSpec


class Engine(Protocol):
    def __call__(self, partitions: Iterable[Partition], spec: WorkerSpec,
                 on_result: Callable[[PartitionResult], None]) -> None: ...
