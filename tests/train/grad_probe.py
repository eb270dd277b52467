"""One rank of the gradient-equivalence test (run by torchrun from test_loss_normalisation.py).

For each config given, builds the engine as the trainer does, runs the first optimizer step's micro-batches
through the trainer's own ``micro_step`` (forward_loss + the token-exact scaling + engine.backward), and at
the accumulation boundary, before the optimizer steps, gathers every parameter's full gradient. Rank 0
saves {config name: {"grads": {name: tensor}, "samples": [...], "denominator": int}} to OUT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def full_grad(p) -> torch.Tensor:
    """The reduced fp32 gradient of a ZeRO-1/2 parameter, as ``deepspeed.utils.safe_get_full_grad`` returns it,
    except that a rank whose optimizer partition holds nothing of the parameter's group contributes zeros
    (safe_get_full_grad raises there)."""
    buf = torch.zeros(p.numel(), dtype=torch.float32)
    mapping = getattr(p, "_hp_mapping", None)
    if mapping is not None:
        try:
            frag = mapping.get_lp_grad_fragment(p._index_in_param_group).to(torch.float32).flatten()
        except ValueError:
            frag = None
        if frag is not None:
            addr = mapping.lp_fragment_address
            if frag.shape[0] == p.numel():
                frag = frag.narrow(0, addr.start, addr.numel)
            buf.narrow(0, addr.start, addr.numel).copy_(frag)
    torch.distributed.all_reduce(buf)
    return buf.view_as(p)


def probe(cfg_path: Path) -> dict:
    import deepspeed

    from parsit_train.config import load_config
    from parsit_train.model import build_model, param_groups, set_trainable
    from parsit_train.train import (
        deepspeed_config,
        micro_step,
        open_data,
        seed_everything,
        setup_distributed,
        step_denominator,
    )

    cfg = load_config(cfg_path)
    rank, world, _ = setup_distributed()
    data = open_data(cfg, rank, world, verify_checksums=True)
    loader, sampler = data.loader, data.sampler
    seed_everything(cfg.seed)
    model = build_model(data.model)
    set_trainable(model, cfg.trainable_parts())
    groups = param_groups(model, cfg.optim.lr.model_dump(), cfg.optim.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg, world))
    engine.train()
    denominator, samples = None, []
    for batch in loader:
        if denominator is None:
            denominator, _ = step_denominator(cfg, sampler, batch.data_position)
        micro_step(engine, batch, denominator, world, torch.float32)
        samples.extend(batch.sample_ids)
        if engine.is_gradient_accumulation_boundary():
            break  # gradients reduced; read them before the optimizer steps
        engine.step()  # not a boundary: only counts the micro-step, as in the trainer
    grads = {n: full_grad(p).detach().cpu().clone() for n, p in engine.module.named_parameters()
             if p.requires_grad}
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, samples)
    engine.step()
    return {"grads": grads, "samples": [s for part in gathered for s in part], "denominator": denominator}


def main() -> None:
    *configs, out = sys.argv[1:]
    results = {Path(c).stem: probe(Path(c)) for c in configs}
    if torch.distributed.get_rank() == 0:
        torch.save(results, out)
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
