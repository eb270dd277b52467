"""The training loop, top to bottom: one rank's view of a DeepSpeed run on Parsit shards.

Read in order: distributed setup -> data -> model, trainable parts, optimizer groups -> DeepSpeed engine
-> resume -> the loop (accumulation, logging, checkpoints) -> exports. Each rank runs this same function
(started by torchrun, Ray Train, or directly for a single process).

What makes a resumed run continue exactly where the interrupted one stopped:

* a checkpoint is taken only at an optimizer-step boundary;
* DeepSpeed saves weights, optimizer and LR scheduler; each rank adds its own file with the sampler
  position (counted in samples handed to the loop, not prefetched) and its Python/NumPy/torch RNG states;
* a checkpoint counts only once its completion marker is written, after every rank's and DeepSpeed's
  files; resume takes the newest complete one and says which newer ones it skipped
  (:mod:`parsit_train.checkpoint`).

CPU runs (tests, CI): ``DS_ACCELERATOR=cpu`` and the gloo backend, a ``torch.optim.AdamW`` handed to
DeepSpeed (its fused CPU Adam would JIT-compile a C++ op for about a minute) and DeepSpeed's shared-memory
comm op marked incompatible (it would compile too).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from parsit_data.format import IGNORE_INDEX
from parsit_data.errors import ParsitError
from parsit_train.checkpoint import gathered_projector, resume, save_checkpoint
from parsit_train.config import TrainConfig, config_to_json
from parsit_train.assemble import starting_folder
from parsit_train.compat import disable_shm_comm_op, packs_need_one_row, zero3_consolidated_state_dict
from parsit_train.config import ModelConfig
from parsit_train.data.batch import Batch
from parsit_train.data.loader import BatchSpec, ParsitLoader, build_dataloader
from parsit_train.data.view import BuildView, verify_shards, view_of
from parsit_train.faults import fail_hook
from parsit_train.video_model import check_video_model
from parsit_train.model import (
    PROJECTOR_FILE,
    check_compatibility,
    format_report,
    load_model,
    param_groups,
    parameter_report,
    save_projector,
    set_trainable,
)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
HF_DIR = "hf"


# --- 1. distributed setup -------------------------------------------------------------------------------
def setup_distributed(timeout_s: float = 1800) -> tuple[int, int, int]:
    """Initialise torch.distributed through DeepSpeed; returns (rank, world_size, local_rank).

    A process started without a launcher gets single-process defaults (otherwise DeepSpeed looks for
    MPI). Without CUDA the accelerator is the CPU and the backend gloo. ``timeout_s`` bounds every
    collective: a rank whose peer vanished fails instead of waiting forever.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        os.environ.setdefault(key, value)
    import deepspeed

    disable_shm_comm_op()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ["LOCAL_RANK"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- 2. data --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunData:
    """This rank's data, from its build view (every manifest read once): the view, the ``model`` section
    completed from it (the build's image / video token ids, an inline tower's geometry), and the loader."""

    view: BuildView
    model: ModelConfig
    loader: ParsitLoader
    hashed: str = ""  # why this rank hashed the shards or not

    @property
    def sampler(self):
        return self.loader.sampler


def open_data(cfg: TrainConfig, rank: int, world_size: int, local_rank: int = 0,
              verify_checksums: bool | None = None) -> RunData:
    """This rank's :class:`RunData`. Each build's manifest is read once (:func:`parsit_train.data.view.open_view`);
    the shards are hashed when ``verify_checksums`` says so, or (None) when :func:`rank_hashes` does: once per
    launch or node, not per rank. Everything the collator needs from the model (image token id, the blank
    image) is derived from the view before the loader is built."""
    from parsit_train.families import model_section
    from parsit_train.preflight import rank_hashes

    view = view_of(cfg, verify_checksums=bool(verify_checksums))
    why = "verify_checksums given"
    if verify_checksums is None:
        hashes, why = rank_hashes(cfg, local_rank, view)
        if hashes:
            verify_shards(view)
    mcfg = model_section(cfg.model, view)
    spec = BatchSpec(batch_size=cfg.optim.micro_batch_size, image_token_id=mcfg.image_token_id, seed=cfg.seed,
                     rank=rank, world_size=world_size, loss_weighting=cfg.optim.loss_weighting,
                     video_token_id=mcfg.video_token_id,
                     # A batch without images gets one blank image (masked out / its own segment, never
                     # supervised): every rank must run the same modules each micro-step, or ZeRO-3's
                     # per-module gathers pair up wrongly and ZeRO-2 misses gradients. A run whose rows
                     # hold a video gives a batch without one a blank video, for the same reason.
                     blank_image=True)
    loader = build_dataloader(view, cfg.data, cfg.dataloader, spec)
    return RunData(view=view, model=mcfg, loader=loader, hashed=why)


# --- 3. optimisation pieces -----------------------------------------------------------------------------
def total_steps(cfg: TrainConfig, micro_batches_per_epoch: int) -> int:
    if cfg.optim.max_steps is not None:
        return cfg.optim.max_steps
    per_epoch = micro_batches_per_epoch // cfg.optim.gradient_accumulation_steps
    if per_epoch < 1:
        raise ParsitError(
            f"one epoch has {micro_batches_per_epoch} micro-batches per rank, fewer than gradient_accumulation_steps="
            f"{cfg.optim.gradient_accumulation_steps}: lower the batch size or accumulation, or set optim.max_steps"
        )
    return per_epoch * cfg.optim.epochs


def check_epoch_fills_a_batch(sampler, epoch: int | None = None) -> None:
    """Refuse an epoch with fewer rows (or packs) than one global batch: with drop_last it yields no batch,
    and a run with ``optim.max_steps`` would go round its empty epochs forever."""
    units, g = sampler.epoch_units(epoch), sampler.global_batch_size
    if not sampler.drop_last or units >= g:
        return
    what = f"packs of pack_length={sampler.pack_length}" if sampler.pack_length else "rows (after build weights)"
    raise ParsitError(
        f"epoch {sampler.epoch if epoch is None else epoch} has {units} {what}, fewer than one global batch of {g} "
        f"(micro_batch_size {sampler.batch_size} x {sampler.world_size} rank(s)): no batch could be formed. Lower "
        f"optim.micro_batch_size, use fewer ranks{', a smaller data.pack_length' if sampler.pack_length else ''}, "
        "or add data"
    )


def lr_factor(cfg: TrainConfig, total: int):
    """Multiplier of every group's base learning rate at optimizer step ``s`` (warmup, then the schedule)."""
    warmup = cfg.optim.warmup_steps or int(cfg.optim.warmup_ratio * total)
    schedule = cfg.optim.schedule

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress

    return factor


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    o = cfg.optim
    ds = {
        "train_micro_batch_size_per_gpu": o.micro_batch_size,
        "gradient_accumulation_steps": o.gradient_accumulation_steps,
        "train_batch_size": o.micro_batch_size * o.gradient_accumulation_steps * world_size,
        "gradient_clipping": o.max_grad_norm,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": cfg.deepspeed.bf16},
        "steps_per_print": 10**9,  # Parsit logs; DeepSpeed's own step print is noise
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,  # torch.optim.AdamW under ZeRO (see module docstring)
    }
    if cfg.deepspeed.zero_stage == 3:
        ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    for key, value in cfg.deepspeed.overrides.items():
        if isinstance(value, dict) and isinstance(ds.get(key), dict):
            ds[key] = {**ds[key], **value}
        else:
            ds[key] = value
    return ds


# --- 4. metrics -----------------------------------------------------------------------------------------
class Metrics:
    """Rank 0's sink: terminal log lines, ``metrics.jsonl`` (one line per step), TensorBoard if installed."""

    def __init__(self, cfg: TrainConfig, rank: int) -> None:
        self.active = rank == 0
        self.every = cfg.logging.every_steps
        self.tb = None
        if not self.active:
            return
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(cfg.output_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if cfg.logging.tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(cfg.output_dir / "tensorboard"))
            except ImportError:
                if cfg.logging.tensorboard:
                    raise ParsitError("logging.tensorboard is on but tensorboard is not installed: pip install tensorboard") from None

    def step(self, rec: dict, total: int) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        s = rec["step"]
        if s % self.every == 0 or s == total:
            lrs = " ".join(f"{k}={v:.2e}" for k, v in rec["lr"].items())
            gn = "n/a" if rec["grad_norm"] is None else f"{rec['grad_norm']:.3f}"
            util = rec["tokens"] / max(1, rec["padded_tokens"])
            log.info(
                "step %d/%d | epoch %d | loss %.4f | lr %s | grad_norm %s | tok/s %.0f | sup tok/s %.0f | util %.2f",
                s, total, rec["epoch"], rec["loss"], lrs, gn, rec["tokens_per_s"], rec["supervised_tokens_per_s"], util,
            )
        if self.tb is not None:
            self.tb.add_scalar("train/loss", rec["loss"], s)
            for k, v in rec["lr"].items():
                self.tb.add_scalar(f"lr/{k}", v, s)
            if rec["grad_norm"] is not None:
                self.tb.add_scalar("train/grad_norm", rec["grad_norm"], s)
            self.tb.add_scalar("throughput/tokens_per_s", rec["tokens_per_s"], s)
            self.tb.add_scalar("throughput/supervised_tokens_per_s", rec["supervised_tokens_per_s"], s)

    def close(self) -> None:
        if self.active:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


# --- 5. exports (checkpoints: parsit_train.checkpoint) ------------------------------------------------


def export_hf(engine, cfg: TrainConfig, view: BuildView, rank: int) -> Path:
    """A servable Hugging Face folder: config, safetensors, and the serving files (tokenizer, processor,
    chat template, generation config: :mod:`parsit_train.serving`), so that ``AutoProcessor`` and
    ``LlavaForConditionalGeneration.from_pretrained`` of it reproduce the training inputs."""
    from parsit_train.serving import write_serving_files
    from parsit_train.video_serving import export_video_entry

    out = cfg.output_dir / HF_DIR
    if cfg.deepspeed.zero_stage == 3:
        state = zero3_consolidated_state_dict(engine)  # collective: every rank calls it
    else:
        state = engine.module.state_dict() if rank == 0 else None
    if rank == 0:
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        engine.module.save_pretrained(str(out), state_dict=state, safe_serialization=True)
        vc = engine.module.config.vision_config
        write_serving_files(out, view.tokenizer, view.vision, view.template, engine.module.config.image_token_id,
                            vc.patch_size, video=export_video_entry(view.builds))
        log.info("exported Hugging Face model to %s", out)
    torch.distributed.barrier()
    return out


# --- 6. the run -----------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    output_dir: Path | None = None
    stopped_early: bool = False


def forward_loss(model, batch: Batch, device, dtype) -> torch.Tensor:
    """SUM of the next-token cross-entropies over the batch's targets (weighted by ``target_weights`` when
    the collator gives them), projecting only the supervised positions onto the vocabulary.

    The caller divides by the step's total (see :func:`step_scale`): a mean per micro-batch would make the
    gradient depend on how a step's samples are split into micro-batches and ranks. ``targets`` are the
    labels shifted per sample by the collator, so no position of a pack predicts the next sample's first
    token. The model is called with ``use_cache=False``: with a cache (the config default is
    ``use_cache=True``) transformers' packed-sequence masking is off and a packed row would attend across
    its samples; a packed batch has no attention mask for the same reason (its boundaries are the
    ``position_ids`` restarts). Under flash attention a packed micro-batch of several rows goes to the model
    as one row (:func:`parsit_train.data.collator.one_row`): transformers' flash path reads the restarts
    only in a one-row batch, and would otherwise let a pack's samples attend to each other. Logits are
    never materialised as [batch, length, vocab]: a document sample has ~800 positions and a dozen
    supervised ones, and Qwen3's vocabulary is 151k wide.
    """
    if packs_need_one_row(model):  # flash attention finds a pack's boundaries in one row only
        batch = batch.one_row()
    batch = batch.to(device, dtype)
    keep = batch.targets != IGNORE_INDEX
    empty = not bool(keep.any())
    if empty:  # nothing supervised in this micro-batch: a zero loss that still touches every part
        keep[0, 0] = True
    out = model(**batch.model_inputs(), logits_to_keep=keep, use_cache=False)
    logits = out.logits.float().reshape(-1, out.logits.shape[-1])
    if empty:
        return logits.sum() * 0.0
    ce = torch.nn.functional.cross_entropy(logits, batch.targets[keep], reduction="none")
    if batch.target_weights is not None:
        ce = ce * batch.target_weights[keep]
    return ce.sum()


def step_denominator(cfg: TrainConfig, sampler, position: tuple[int, int]) -> tuple[int, int]:
    """(denominator of the step's loss, its supervised tokens) for the step starting at ``position``.

    Computed on every rank from the sampler's knowledge of the step's samples (all ranks, all micro-batches)
    and the shards' ``supervised_tokens`` column: no collective. token weighting divides by the step's
    supervised tokens, sample weighting by its samples that have any.
    """
    tokens, samples, _ = sampler.step_totals(position[0], position[1], cfg.optim.gradient_accumulation_steps)
    return (tokens if cfg.optim.loss_weighting == "token" else samples), tokens


def step_scale(denominator: int, world_size: int) -> float:
    """Factor of a micro-batch's loss SUM so that the engine's gradient is d(step loss)/d(weights).

    ``engine.backward(loss, scale_wrt_gas=False)`` drops DeepSpeed's 1/gradient_accumulation_steps; its
    data-parallel reduction still averages over ranks (ZeRO-2/3: the reduce divides by the data-parallel
    world size, with or without ``gradient_predivide_factor``, whose pre- and post-scaling cancel), which
    the factor ``world_size`` undoes. So the summed gradient over every micro-batch of every rank is
    sum(token losses) / denominator, exactly.
    """
    return world_size / max(1, denominator)


def micro_step(engine, batch: Batch, denominator: int, world_size: int, dtype) -> torch.Tensor:
    """Forward and backward of one micro-batch of a step whose loss denominator is ``denominator``;
    returns the micro-batch's loss sum (detached)."""
    loss = forward_loss(engine, batch, engine.device, dtype)
    engine.backward(loss * step_scale(denominator, world_size), scale_wrt_gas=False)
    return loss.detach()


def train(cfg: TrainConfig, stop_after: int | None = None) -> TrainResult:
    """Run (or resume) the configured training on this rank. ``stop_after``: stop at that step (a drill)."""
    import deepspeed

    from parsit_train.preflight import agree

    rank, world_size, local_rank = setup_distributed(cfg.deepspeed.comm_timeout_s)
    if rank == 0:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        (cfg.output_dir / "train_config.json").write_text(json.dumps(config_to_json(cfg), indent=2) + "\n")

    # Data first: a bad build is refused before minutes of model loading. Each rank reads each build's
    # manifest once (its build view); shards are hashed once per launch (or per node), not per rank; every
    # rank refuses if any rank did.
    t_data = time.perf_counter()
    data = agree(lambda: open_data(cfg, rank, world_size, local_rank))
    view, loader, sampler = data.view, data.loader, data.sampler
    log.info("rank %d: data ready in %.2fs (%s)", rank, time.perf_counter() - t_data, data.hashed)
    check_epoch_fills_a_batch(sampler)  # every rank computes the same numbers: all refuse together
    # The model section as the build completes it (image / video token ids, an inline tower's geometry).
    cfg = cfg.model_copy(update={"model": data.model})

    # Model: one from_pretrained of a merged LLaVA folder (assembled into output_dir/init by rank 0 when the
    # config names two towers); under ZeRO-3 it is created partitioned (keep_alive: see load_model).
    seed_everything(cfg.seed)
    ds_config = deepspeed_config(cfg, world_size)
    init = starting_folder(cfg, view.vision, view.template, rank)
    dtype = torch.bfloat16 if cfg.deepspeed.bf16 else torch.float32
    model, keep_alive = load_model(init, cfg.model, dtype, ds_config)
    check_compatibility(model, view.vision, view.vocab_size)
    set_trainable(model, cfg.trainable_parts())
    report = parameter_report(model)
    if rank == 0:
        log.info("stage %s, trainable parts %s\n%s", cfg.stage, cfg.trainable_parts(), format_report(report))
    lrs = cfg.optim.lr.model_dump()
    groups = param_groups(model, lrs, cfg.optim.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=max(g["lr"] for g in groups), betas=cfg.optim.betas)
    total = total_steps(cfg, len(sampler))
    factor = lr_factor(cfg, total)
    engine, optimizer, _, _scheduler = deepspeed.initialize(  # DeepSpeed steps the scheduler
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
        config=ds_config,
    )
    del keep_alive  # the engine exists: transformers' ZeRO-3 hook is no longer needed
    check_video_model(loader.collator, engine.module.config)  # changes nothing: the collator was made for it

    step, run_id = resume(engine, cfg, sampler, rank, cfg.output_dir / METRICS_FILE)  # restores the RNG streams too
    if step == 0:
        seed_everything(cfg.seed + rank)  # runtime streams differ per rank
    metrics = Metrics(cfg, rank)
    result = TrainResult(steps=step, output_dir=cfg.output_dir)
    every = cfg.checkpoint.every_steps
    engine.train()

    # loss sum, micro-batches, tokens, supervised tokens, padded positions, samples with supervision
    acc = torch.zeros(6, dtype=torch.float64)
    loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
    step_ids: list[str] = []
    denominator = planned = None
    t_last = time.perf_counter()
    while step < total and not result.stopped_early:
        from_start, sampler_epoch = sampler.consumed == 0, sampler.epoch
        for batch in loader:
            from_start = False
            if denominator is None:  # first micro-batch of a step: its loss denominator, from the plan
                denominator, planned = step_denominator(cfg, sampler, batch.data_position)
            loss = micro_step(engine, batch, denominator, world_size, dtype)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            loss_sum += loss.double()  # no host sync per micro-batch; read once per step
            acc += torch.tensor([0, 1, batch.num_tokens, batch.num_supervised, batch.num_padded,
                                 batch.num_samples_supervised], dtype=torch.float64)
            step_ids.extend(batch.sample_ids)
            if not boundary:
                continue

            # --- one optimizer step done ---
            step += 1
            acc[0] = loss_sum.item()
            reduced = acc.to(engine.device)  # NCCL reduces device tensors only
            torch.distributed.all_reduce(reduced)
            acc = reduced.cpu()
            if int(acc[3]) != planned:
                raise ParsitError(
                    f"step {step}: the batches held {int(acc[3])} supervised targets, the shards' supervised_tokens "
                    f"column says {planned}: the build is inconsistent (a supervised first token?); rebuild it"
                )
            now = time.perf_counter()
            grad_norm = engine.get_global_grad_norm()
            rec = {
                "step": step,
                "epoch": sampler.epoch,
                "loss": float(acc[0]) / max(1, denominator),
                "lr": {g["part"]: g["lr"] for g in optimizer.param_groups},
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "tokens": int(acc[2]),
                "padded_tokens": int(acc[4]),
                "supervised_tokens": int(acc[3]),
                "tokens_per_s": float(acc[2]) / (now - t_last),
                "supervised_tokens_per_s": float(acc[3]) / (now - t_last),
            }
            if cfg.logging.sample_ids:
                gathered = [None] * world_size
                torch.distributed.all_gather_object(gathered, step_ids)
                rec["sample_ids"] = [s for ids in gathered for s in ids]
            metrics.step(rec, total)
            result.losses.append(rec["loss"])
            acc.zero_()
            loss_sum.zero_()
            step_ids = []
            denominator = planned = None
            if stop_after is not None and step >= stop_after and step < total:
                result.stopped_early = True
            if (every and step % every == 0) or step == total or result.stopped_early:
                save_checkpoint(engine, cfg, step, sampler, rank, run_id)
            fail_hook(rank, step, "step")  # test hook (PARSIT_TEST_FAIL_AT); a no-op in real runs
            t_last = time.perf_counter()
            if step >= total or result.stopped_early:
                break
        if from_start:  # a whole epoch without one batch (checked at start for the first epoch only)
            check_epoch_fills_a_batch(sampler, sampler_epoch)
    result.steps = step
    metrics.close()

    if not result.stopped_early:
        if cfg.export_projector():
            state = gathered_projector(engine)
            if rank == 0:
                save_projector(state, engine.module.config, cfg.output_dir / PROJECTOR_FILE)
                log.info("exported projector to %s", cfg.output_dir / PROJECTOR_FILE)
        if cfg.checkpoint.export_hf:
            export_hf(engine, cfg, view, rank)
    torch.distributed.barrier()
    return result
