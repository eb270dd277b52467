"""Checks that run before any rank trains, and shard hashing done once instead of once per rank.

``parsit-train launch`` opens the builds with the checks a rank makes (:func:`check_data`: manifest,
shard sizes and sha256, tokenizer fingerprint, pad id, image token index and id, vision geometry, row
counts and lengths; without importing torch) *before* it starts torchrun, so a bad build is one ``error:`` line and exit code 2. Having
hashed the shards it writes a stamp into the launch folder: for every build the sha256 of its
manifest (as parsed: the rank compares the manifest it read once, :mod:`parsit_train.data.view`, without
reading the file again) and each shard's size and mtime. A rank started by that launch finds the stamp, checks
that the manifest and every shard's size and mtime are unchanged (a ``stat`` per shard) and skips the
hashing; it still runs every other check, which read only the manifest and the shards' footers.

Started otherwise (Ray Train, ``parsit-train train`` under your own torchrun), local rank 0 of each node
hashes while the other ranks open the data without hashing; the ranks then agree (one
``all_gather_object``): if any rank refused the data, every rank raises that rank's error, so nobody
hangs in a later collective and nobody trains on data its node did not verify.

``data.verify: size`` skips hashing everywhere (manifest, sizes and row counts are still checked): for
very large builds on storage you trust, since reading 1 TB to hash it takes as long as an epoch may.

``PARSIT_VERIFY_EVERY_RANK=1`` and ``PARSIT_LAUNCH_NO_VERIFY=1`` are BENCHMARK HOOKS: every rank hashes
and launch does not check, as before verification was done once (benchmarks/startup.py measures it).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from parsit_data.errors import ParsitError
from parsit_train.config import TrainConfig
from parsit_train.faults import launch_dir

log = logging.getLogger(__name__)

STAMP_NAME = "data_verified.json"
EVERY_RANK_ENV = "PARSIT_VERIFY_EVERY_RANK"
T = TypeVar("T")


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def build_stamp(view) -> dict:
    """What a later process checks to trust that these builds' bytes are the ones just hashed: per build the
    sha256 of its manifest as parsed (canonical bytes) and each shard's size and mtime."""
    from parsit_train.data.view import manifest_digest

    builds = {}
    for build in view.builds:
        shards = {e.path: _identity(p) for e, p in zip(build.manifest.shards, build.shard_paths, strict=True)}
        builds[str(build.root)] = {"manifest_sha256": manifest_digest(build), "shards": shards}
    return {"builds": builds}


def stamp_covers(stamp_path: Path, view) -> bool:
    """True when the stamp names every build of the rank's view with an unchanged manifest (the one the view
    read: no second read) and unchanged shard sizes/mtimes."""
    from parsit_data.format.fsio import RemotePath
    from parsit_train.data.view import manifest_digest

    if any(isinstance(p, RemotePath) for b in view.builds for p in b.shard_paths):
        return False  # builds on an object store: each shard is verified as it reaches the cache instead
    try:
        stamp = json.loads(stamp_path.read_text())["builds"]
        for build in view.builds:
            entry = stamp[str(build.root)]
            if manifest_digest(build) != entry["manifest_sha256"]:
                return False
            if any(_identity(build.root / rel) != ident for rel, ident in entry["shards"].items()):
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def rank_hashes(cfg: TrainConfig, local_rank: int, view) -> tuple[bool, str]:
    """(whether this rank hashes the shards of its view, why) -- see the module doc."""
    if cfg.data.verify == "size":
        return False, "data.verify is size: shard sizes and manifests checked, not hashed"
    if os.environ.get(EVERY_RANK_ENV) == "1":
        return True, f"{EVERY_RANK_ENV}=1: every rank hashes"
    folder = launch_dir()
    if folder is not None and stamp_covers(folder / STAMP_NAME, view):
        return False, "shards hashed once by launch (stamp checked: manifests, sizes, mtimes unchanged)"
    if local_rank == 0:
        return True, "local rank 0 hashes the shards for this node"
    return False, "local rank 0 hashes the shards for this node"


def check_data(cfg: TrainConfig, verify_checksums: bool = True):
    """Open the builds with the checks a rank makes (see :func:`parsit_train.train.open_data`), without
    importing torch or the model (start-up time before any rank starts). Returns the build view; raises
    ParsitError."""
    from parsit_train.data.dataset import ShardDataset
    from parsit_train.data.view import view_of

    view = view_of(cfg, verify_checksums=verify_checksums)
    ShardDataset(view)  # maps every shard: row counts against the manifests, lengths against max_length
    token = cfg.model.image_token_id
    vocab = view.vocab_size
    if vocab and not 0 <= token < vocab:
        raise ParsitError(f"model.image_token_id {token} is outside the tokenizer's {vocab} ids: use the model's "
                          "image token id (Qwen3: 151655, <|image_pad|>)")
    from parsit_train.families import check_model_section, model_section

    model_section(cfg.model, view)  # the build's placeholder ids against the config's and init_from's
    check_model_section(cfg.model, view.vision)  # a model of another family / geometry: refused here, once
    return view


def verify_before_launch(cfg: TrainConfig, folder: Path) -> float:
    """Check the builds as a rank would (raises ParsitError); write the stamp. Returns seconds spent."""
    t0 = time.perf_counter()
    full = cfg.data.verify == "full"
    view = check_data(cfg, verify_checksums=full)
    from parsit_data.format.fsio import is_uri

    if full and not any(is_uri(str(b.path)) for b in cfg.data.builds):  # remote: verified in the cache
        (folder / STAMP_NAME).write_text(json.dumps(build_stamp(view)))
    return time.perf_counter() - t0


def agree(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it raised ParsitError on any rank, raise the lowest such rank's error on all."""
    import torch.distributed as dist

    value, error = None, None
    try:
        value = fn()
    except ParsitError as exc:
        error = str(exc)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
    else:
        errors = [error]
    for rank, err in enumerate(errors):
        if err is not None:
            if len(errors) == 1 or rank == dist.get_rank():
                raise ParsitError(err)
            raise RelayedError(rank, err)
    return value


class RelayedError(ParsitError):
    """Another rank's error, raised here too so that this rank stops with it (the report names the origin)."""

    def __init__(self, origin_rank: int, message: str) -> None:
        super().__init__(f"(on rank {origin_rank}) {message}")
        self.origin_rank = origin_rank
