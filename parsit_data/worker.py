"""What an engine hands each worker (:class:`WorkerSpec`) and what a worker builds from it once.

A :class:`WorkerSpec` is plain, picklable data (the Ray engine ships it to its actors); a
:class:`WorkerContext` is what a worker loads once from it and reuses for every partition (the
tokenizer above all).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from parsit_data.config import BuildConfig
from parsit_data.encode import SegmentTokenizer
from parsit_data.format import ShardMeta, fingerprint
from parsit_data.format.fsio import RemotePath, location
from parsit_data.templates import get_template
from parsit_data.tokenizer import load_tokenizer
from parsit_data.validate import ValidationOptions
from parsit_data.video_build import VideoLoader


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build partitions of one build."""

    config: BuildConfig
    config_hash: str
    #: Template and tokenizer control tokens: never allowed in text.
    control_tokens: frozenset[str]
    #: The build directory, where the worker writes each partition's shard, quarantine part and part file.
    out: Path | RemotePath | str


class WorkerContext:
    """A worker's state for one build, loaded once from its :class:`WorkerSpec`."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.config = config = spec.config
        self.config_hash = spec.config_hash
        self.out = location(spec.out, "--out")  # a URI string (a Ray worker opens its own store) or a path
        self.tokenizer = SegmentTokenizer(load_tokenizer(config.tokenizer))
        self.template = get_template(config.template, config.tokenizer)
        self.unmask = self.template.unmask_tokens(config.label_policy)
        self.vopts = ValidationOptions(spec.control_tokens, config.fix_missing_placeholder)
        self.iopts = config.image_options
        self.geometry = config.geometry
        #: The worker's clips: its own decoder child, started at the first video record.
        self.videos = VideoLoader(config)
        #: What every shard of the build says about the build (its schema metadata).
        self.shard_meta = ShardMeta(spec.config_hash, fingerprint(config.tokenizer), config.template)

    def close(self) -> None:
        """Stop what the worker started (the video decoder child)."""
        self.videos.close()
