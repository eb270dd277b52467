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
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from parsit_data.format import IGNORE_INDEX
from parsit_data.errors import ParsitError
from parsit_train.checkpoint import gathered_projector, resume, save_checkpoint
from parsit_train.config import TrainConfig, config_to_json
from parsit_train.faults import fail_hook
from parsit_train.model import (
    PROJECTOR_FILE,
    build_model,
    check_compatibility,
    fill_vision_geometry,
    format_report,
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

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
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
def open_data(cfg: TrainConfig, image_token_id: int, rank: int, world_size: int, verify_checksums: bool = True):
    """(loader, sampler, vision geometry, tokenizer vocab size) for this rank, from the builds' manifests.

    ``verify_checksums`` False skips the shards' sha256 (done once per launch or node: see preflight)."""
    from parsit_data.format import load_manifest
    from parsit_train.data import build_dataloader
    from parsit_train.preflight import data_max_length

    manifests = [load_manifest(b.path) for b in cfg.data.builds]
    max_length = data_max_length(cfg, manifests)
    dl = cfg.dataloader
    loader, sampler = build_dataloader(
        [b.path for b in cfg.data.builds],
        [b.weight for b in cfg.data.builds],
        tokenizer_path=cfg.data.tokenizer,
        image_token_id=image_token_id,
        batch_size=cfg.optim.micro_batch_size,
        max_length=max_length,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        num_workers=dl.num_workers,
        group_by_length=cfg.data.group_by_length,
        prefetch_factor=dl.prefetch_factor,
        persistent_workers=dl.persistent_workers,
        pin_memory=dl.pin_memory,
        verify_checksums=verify_checksums,
    )
    vision = manifests[0].vision.model_dump(mode="json")  # the dataset refused builds of other geometries
    vocab = max(m.tokenizer.vocab_size for m in manifests)
    return loader, sampler, vision, vocab


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
            log.info(
                "step %d/%d | epoch %d | loss %.4f | lr %s | grad_norm %s | tok/s %.0f | sup tok/s %.0f",
                s, total, rec["epoch"], rec["loss"], lrs, gn, rec["tokens_per_s"], rec["supervised_tokens_per_s"],
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


# --- 5. exports (checkpoints: parsit_train.checkpoint) ---------------------------------------------------------------------
def export_hf(engine, cfg: TrainConfig, rank: int) -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer files) that LlavaForConditionalGeneration loads."""
    from parsit_data.format import resolve_tokenizer_path

    out = cfg.output_dir / HF_DIR
    if cfg.deepspeed.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank calls it
    else:
        state = engine.module.state_dict() if rank == 0 else None
    if rank == 0:
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        engine.module.save_pretrained(str(out), state_dict=state, safe_serialization=True)
        tok = resolve_tokenizer_path(cfg.data.tokenizer)
        for f in tok.iterdir():
            if f.is_file() and (f.suffix in {".json", ".txt", ".model", ".jinja"}):
                shutil.copy2(f, out / f.name)
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


def with_blank_image(batch: dict, image_token_id: int, image_size: int, tokens: int) -> dict:
    """A text-only batch with one blank image appended after the padding (masked out, not supervised).

    Every rank must run the same modules in the same order each micro-step: ZeRO-3 gathers parameters
    module by module (a rank that skipped the vision tower would pair its gathers with another rank's
    language-model gathers and corrupt or hang the collective), and ZeRO-2 expects a gradient for every
    trainable parameter. The appended positions come after every real token and are masked out, so
    causal attention keeps them from changing any real position; their labels are ignored.
    """
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    extra = torch.zeros((ids.shape[0], tokens), dtype=ids.dtype)
    extra_ids = extra.clone()
    extra_ids[0] = image_token_id
    return {
        **batch,
        "input_ids": torch.cat([ids, extra_ids], dim=1),
        "labels": torch.cat([labels, torch.full_like(extra, IGNORE_INDEX)], dim=1),
        "attention_mask": torch.cat([mask, extra], dim=1),
        "pixel_values": torch.zeros(1, 3, image_size, image_size),
    }


def forward_loss(model, batch: dict, device, dtype) -> torch.Tensor:
    """Mean next-token cross-entropy over the supervised positions, projecting only those onto the vocabulary.

    The same value as the model's own ``labels=`` loss, without materialising [batch, length, vocab] logits:
    a document sample has ~800 positions and a dozen supervised ones, and Qwen3's vocabulary is 151k wide.
    """
    labels = batch["labels"].to(device)
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    keep = targets != IGNORE_INDEX
    empty = not bool(keep.any())
    if empty:  # nothing supervised in this micro-batch: a zero loss that still touches every part
        keep[0, 0] = True
    pixels = batch["pixel_values"]
    out = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        pixel_values=None if pixels is None else pixels.to(device, dtype),
        logits_to_keep=keep,
    )
    logits = out.logits.float().reshape(-1, out.logits.shape[-1])
    if empty:
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits, targets[keep])


def train(cfg: TrainConfig, stop_after: int | None = None) -> TrainResult:
    """Run (or resume) the configured training on this rank. ``stop_after``: stop at that step (a drill)."""
    import deepspeed

    from parsit_train.preflight import agree, rank_hashes

    rank, world_size, local_rank = setup_distributed(cfg.deepspeed.comm_timeout_s)
    if rank == 0:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        (cfg.output_dir / "train_config.json").write_text(json.dumps(config_to_json(cfg), indent=2) + "\n")

    # Data first: a bad build is refused before minutes of model loading.
    # Shards are hashed once per launch (or per node), not per rank; every rank refuses if any rank did.
    hashes, why = rank_hashes(cfg, local_rank)
    t_data = time.perf_counter()
    loader, sampler, vision, vocab = agree(
        lambda: open_data(cfg, cfg.model.image_token_id, rank, world_size, verify_checksums=hashes))
    log.info("rank %d: data ready in %.2fs (%s)", rank, time.perf_counter() - t_data, why)

    # Model: the same seed on every rank, so the initial weights agree before DeepSpeed partitions them.
    fill_vision_geometry(cfg.model, vision)
    seed_everything(cfg.seed)
    model = build_model(cfg.model)
    check_compatibility(model, vision, vocab)
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
        config=deepspeed_config(cfg, world_size),
    )
    dtype = torch.bfloat16 if cfg.deepspeed.bf16 else torch.float32
    vc = engine.module.config.vision_config
    blank_tokens = (vc.image_size // vc.patch_size) ** 2  # "full" feature strategy: every patch

    step = resume(engine, cfg, sampler, rank, cfg.output_dir / METRICS_FILE)  # restores the RNG streams too
    if step == 0:
        seed_everything(cfg.seed + rank)  # runtime streams differ per rank
    metrics = Metrics(cfg, rank)
    result = TrainResult(steps=step, output_dir=cfg.output_dir)
    every = cfg.checkpoint.every_steps
    engine.train()

    acc = torch.zeros(4, dtype=torch.float64)  # loss sum, micro-batches, tokens, supervised tokens
    loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
    step_ids: list[str] = []
    t_last = time.perf_counter()
    while step < total and not result.stopped_early:
        for batch in loader:
            feed = batch if batch["pixel_values"] is not None else with_blank_image(
                batch, cfg.model.image_token_id, vc.image_size, blank_tokens)
            loss = forward_loss(engine, feed, engine.device, dtype)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            loss_sum += loss.detach().double()  # no host sync per micro-batch; read once per step
            acc += torch.tensor([0, 1, batch["num_tokens"], batch["num_supervised"]], dtype=torch.float64)
            step_ids.extend(batch["sample_ids"])
            if not boundary:
                continue

            # --- one optimizer step done ---
            step += 1
            acc[0] = loss_sum.item()
            reduced = acc.to(engine.device)  # NCCL reduces device tensors only
            torch.distributed.all_reduce(reduced)
            acc = reduced.cpu()
            now = time.perf_counter()
            grad_norm = engine.get_global_grad_norm()
            rec = {
                "step": step,
                "epoch": sampler.epoch,
                "loss": float(acc[0] / acc[1]),
                "lr": {g["part"]: g["lr"] for g in optimizer.param_groups},
                "grad_norm": None if grad_norm is None else float(grad_norm),
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
            if stop_after is not None and step >= stop_after and step < total:
                result.stopped_early = True
            if (every and step % every == 0) or step == total or result.stopped_early:
                save_checkpoint(engine, cfg, step, sampler, rank)
            fail_hook(rank, step, "step")  # test hook (PARSIT_TEST_FAIL_AT); a no-op in real runs
            t_last = time.perf_counter()
            if step >= total or result.stopped_early:
                break
    result.steps = step
    metrics.close()

    if not result.stopped_early:
        if cfg.export_projector():
            state = gathered_projector(engine)
            if rank == 0:
                save_projector(state, engine.module.config, cfg.output_dir / PROJECTOR_FILE)
                log.info("exported projector to %s", cfg.output_dir / PROJECTOR_FILE)
        if cfg.checkpoint.export_hf:
            export_hf(engine, cfg, rank)
    torch.distributed.barrier()
    return result
