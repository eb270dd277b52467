"""Checkpoints that are complete or ignored, and exact resume from the newest complete one (the
collective side; the on-disk contract, which needs no torch, is :mod:`parsit_train.checkpoint_files`).

A checkpoint ``output_dir/checkpoints/step-NNNNNNNN/`` holds DeepSpeed's files (weights, optimizer, LR
scheduler), one ``parsit_rank<R>.pt`` per rank (sampler position and RNG states) and, for the pretrain
stage, ``projector.safetensors``. It is written in this order:

1. rank 0 removes a leftover folder of the same step (a run that died while writing it), barrier;
2. every rank writes its own file, then DeepSpeed writes its files (``save_latest=False``);
3. barrier: every rank's files are in place;
4. rank 0 fsyncs every file, then writes ``parsit_complete.json`` (step, world size, run id, every file's
   size), then moves ``latest`` (write-and-rename), then prunes to ``checkpoint.keep_last`` complete
   checkpoints of this run (another run's are never pruned: see :mod:`parsit_train.checkpoint_files`).

A folder without that marker, or whose files do not have the sizes it lists, is never loaded: resume
takes the newest complete checkpoint and logs every newer one it skipped and why. Rank 0 chooses and
tells the others, so every rank loads the same one. On resume, ``metrics.jsonl`` keeps only the steps up
to the checkpoint's, so the steps the interrupted run did after it are not listed twice.

Another world size: DeepSpeed loads its partitioned ZeRO files only at the data-parallel world size that
wrote them, so rank 0 converts the checkpoint once to DeepSpeed's universal checkpoint (``step-N/universal``,
per-parameter weights and optimizer states) and every rank loads that (:func:`load_resharded`). The
sampler position is world-size independent; each rank's RNG streams are reseeded from (seed, rank, step)
(:func:`reseed_rng`): the saved ones belong to the old ranks.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from parsit_data.errors import ParsitError
from parsit_train.checkpoint_files import (
    checkpoint_world_size,
    claim,
    point_latest,
    prune,
    tag,
    truncate_metrics,
    write_complete_marker,
)
from parsit_train.compat import optimizer_group_layout, repair_zero3_universal_load
from parsit_train.config import TrainConfig, config_to_json
from parsit_train.faults import fail_hook, finish_before_stopping
from parsit_train.model import PROJECTOR_FILE, projector_params, projector_state, save_projector

log = logging.getLogger(__name__)

RANK_STATE = "parsit_rank{rank}.pt"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def reseed_rng(seed: int, rank: int, step: int) -> None:
    """Seed this rank's Python, NumPy and torch (CUDA too) streams from (seed, rank, step) alone: distinct
    per rank, the same in every run that resumes the same step with the same ranks (NumPy's SeedSequence
    mixes the three, so neighbouring seeds and ranks do not collide)."""
    words = np.random.SeedSequence([seed % 2**64, rank, step]).generate_state(4, dtype=np.uint64)
    random.seed(int(words[0]))
    np.random.seed(int(words[1]) % 2**32)
    torch.manual_seed(int(words[2]))  # seeds every CUDA device too


# --- save / resume (collectives: every rank calls them) -------------------------------------------------
def gathered_projector(engine) -> dict | None:
    """The projector's full weights on rank 0 (None elsewhere), gathering ZeRO-3 partitions."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(projector_params(engine.module), modifier_rank=None):
        state = projector_state(engine.module) if torch.distributed.get_rank() == 0 else None
    return state


def save_checkpoint(engine, cfg: TrainConfig, step: int, sampler, rank: int, run_id: str) -> Path:
    """Write the checkpoint of ``step`` (collective). A stop signal received meanwhile takes effect once it
    is written (:func:`parsit_train.faults.finish_before_stopping`)."""
    with finish_before_stopping():
        return _save_checkpoint(engine, cfg, step, sampler, rank, run_id)


def _save_checkpoint(engine, cfg: TrainConfig, step: int, sampler, rank: int, run_id: str) -> Path:
    ckpt_dir = cfg.checkpoint_dir()
    path = ckpt_dir / tag(step)
    world_size = torch.distributed.get_world_size()
    if rank == 0:
        if path.exists():
            shutil.rmtree(path)  # never complete (else the run would have resumed from it): a leftover
        path.mkdir(parents=True)
    torch.distributed.barrier()
    torch.save({"step": step, "world_size": world_size, "sampler": sampler.state_dict(), "rng": rng_state()},
               path / RANK_STATE.format(rank=rank))
    client = {"parsit": {"step": step, "config": config_to_json(cfg)}}
    engine.save_checkpoint(str(ckpt_dir), tag=path.name, client_state=client, save_latest=False)
    if cfg.export_projector():
        state = gathered_projector(engine)
        if rank == 0:
            save_projector(state, engine.module.config, path / PROJECTOR_FILE)
    fail_hook(rank, step, "checkpoint")
    torch.distributed.barrier()  # every rank's files, and DeepSpeed's, are in place
    if rank == 0:
        write_complete_marker(path, step, world_size, run_id)
        point_latest(ckpt_dir, path.name)
        prune(ckpt_dir, cfg.checkpoint.keep_last, run_id)
        log.info("checkpoint %s", path)
    torch.distributed.barrier()
    return path


UNIVERSAL = "universal"


def to_universal(path: Path) -> Path:
    """DeepSpeed's universal form of the checkpoint ``path`` (one file per parameter and optimizer state,
    no data-parallel partitions), converted once into ``path/universal`` (write-and-rename) and reused.

    Rank 0 only, serial (no worker processes inside a rank). It lives inside the checkpoint folder, so
    pruning removes it with the checkpoint; the completion marker does not list it and ignores it.
    """
    from argparse import Namespace

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    out = path / UNIVERSAL
    if (out / "zero" / "optimizer_state.pt").is_file():
        return out
    tmp = path / (UNIVERSAL + ".tmp")
    for stale in (tmp, out):  # a conversion that stopped half-way
        shutil.rmtree(stale, ignore_errors=True)
    ds_to_universal(Namespace(input_folder=str(path), output_folder=str(tmp), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True))
    tmp.replace(out)
    return out


def load_resharded(engine, path: Path, saved_world: int, world_size: int, rank: int):
    """Load a checkpoint written by ``saved_world`` ranks into this ``world_size``-rank run, optimizer state
    included: DeepSpeed refuses its own partitioned files at another data-parallel world size, so they are
    converted to its universal checkpoint (:func:`to_universal`) and loaded as one (``checkpoint.load_universal``
    turned on for this load only). Under ZeRO-3 each optimizer group's hyper-parameters and each Adam state's
    step are then repaired (:func:`parsit_train.compat.repair_zero3_universal_load`). Returns DeepSpeed's
    load path (None if it could not load)."""
    problem = [None]
    if rank == 0:
        log.warning("resuming with %d ranks from a %d-rank checkpoint: converting %s to a universal checkpoint",
                    world_size, saved_world, path)
        try:
            to_universal(path)
        except Exception as exc:  # noqa: BLE001 (every rank must hear about it, not wait at the barrier)
            problem[0] = f"{type(exc).__name__}: {exc}"
    torch.distributed.broadcast_object_list(problem, src=0)
    if problem[0] is not None:
        raise ParsitError(
            f"the checkpoint {path} was written by {saved_world} ranks and this run has {world_size}; converting it "
            f"to a universal checkpoint failed ({problem[0]}): resume with {saved_world} ranks, or set "
            f"checkpoint.resume: false with checkpoint.move_aside: true to start over")
    config = engine._config  # noqa: SLF001 (DeepSpeed reads load_universal from its config at load time)
    config.load_universal_checkpoint = True
    layout = optimizer_group_layout(engine)
    try:
        load_path, _client = engine.load_checkpoint(str(path), tag=UNIVERSAL)
    finally:
        config.load_universal_checkpoint = False
    if load_path is not None and engine.zero_optimization_stage() == 3:
        repair_zero3_universal_load(engine, path / UNIVERSAL, layout)  # DeepSpeed 0.19.8's stage-3 loader
    return load_path


def resume(engine, cfg: TrainConfig, sampler, rank: int, metrics_file: Path) -> tuple[int, str]:
    """Load the newest complete checkpoint if there is one (and ``checkpoint.resume``); returns (the optimizer
    step to continue from, this run's id). A new run refuses another run's checkpoints or moves them aside
    (:func:`parsit_train.checkpoint_files.claim`)."""
    chosen: list = [None, None, None]  # checkpoint path, run id, refusal
    if rank == 0:
        try:
            path, run_id, skipped = claim(cfg.checkpoint_dir(), cfg.checkpoint.resume, cfg.checkpoint.move_aside,
                                          metrics_file)
        except ParsitError as exc:
            chosen[2] = str(exc)
        else:
            for bad, why in skipped:
                log.warning("checkpoint %s is not usable (%s); %s", bad, why,
                            f"resuming from {path.name} instead" if path else "no complete checkpoint before it")
            chosen[:2] = None if path is None else str(path), run_id
    torch.distributed.broadcast_object_list(chosen, src=0)  # every rank loads the one rank 0 chose
    if chosen[2] is not None:
        raise ParsitError(chosen[2])
    step, run_id = 0, chosen[1]
    if chosen[0] is not None:
        path = Path(chosen[0])
        saved_world = checkpoint_world_size(path)
        world_size = torch.distributed.get_world_size()
        if saved_world is None or saved_world == world_size:
            load_path, _client = engine.load_checkpoint(str(path.parent), tag=path.name)
        else:
            load_path = load_resharded(engine, path, saved_world, world_size, rank)
        if load_path is None:
            raise ParsitError(f"DeepSpeed could not load the checkpoint {path}: delete it, or set checkpoint.resume: false with checkpoint.move_aside: true")
        own = path / RANK_STATE.format(rank=rank)
        state = torch.load(own if own.is_file() else path / RANK_STATE.format(rank=0), weights_only=False)
        sampler.load_state_dict(state["sampler"])
        if state["world_size"] == torch.distributed.get_world_size() and own.is_file():
            set_rng_state(state["rng"])
        else:  # the saved streams are other ranks': each rank gets its own from (seed, rank, step)
            reseed_rng(cfg.seed, rank, int(state["step"]))
            if rank == 0:
                log.warning("resuming with %d ranks from a %d-rank checkpoint: data position kept, RNG streams "
                            "reseeded from (seed, rank, step)", torch.distributed.get_world_size(), state["world_size"])
        step = int(state["step"])
        if rank == 0:
            log.info("resumed from %s at step %d", path, step)
    if rank == 0:
        truncate_metrics(metrics_file, step)
    return step, run_id
