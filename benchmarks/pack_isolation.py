"""Pack isolation through the trainer's forward path: a sample's loss inside a pack vs the same sample alone.

Used by ``scripts/gpu_check.sh`` (benchmarks/gpu_check.py) with the real flash_attn kernels on a GPU, and
by tests/train/test_gpu_check.py on CPU. Given a packed micro-batch of two packs (``micro_batch_size 2``),
it takes the last sample of the second pack (it has at least one sample before it in its row) and computes
its per-token loss with :func:`parsit_train.train.forward_loss` (the trainer's call: ``target_weights``
select that sample's targets only) in four ways:

* ``2 packs``: the whole [2, T] micro-batch, as the trainer runs it;
* ``1 pack``: its row alone, as a [1, T] micro-batch;
* ``2 packs, rows kept`` (flash attention only): the [2, T] micro-batch handed to the model as it is, the
  trainer's path before it flattened flash-attention micro-batches into one row (the leak it fixed);
* ``alone``: the sample by itself, unpacked (the reference).

A pack is isolated when the in-pack losses and logits equal ``alone``'s up to the kernels' rounding. The
verdict reads the logits (the largest difference at the sample's supervised positions, relative to the
largest logit): on a model with random weights the loss sits near ln(vocab) and moves little (a leak
moved it by 2.7e-4 relative, its logits by 30x more).
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE = -100


def _segments(positions: torch.Tensor, targets: torch.Tensor) -> list[tuple[int, int]]:
    """[(start, end)] of a row's samples (segments restart position ids at 0; padding has no target)."""
    starts = np.flatnonzero(positions.cpu().numpy() == 0).tolist() + [positions.shape[0]]
    return [(a, b) for a, b in zip(starts, starts[1:]) if bool((targets[a:b] != IGNORE).any())]


def _crops(input_ids: torch.Tensor, image_token_id: int, tokens_per_crop: int) -> int:
    return int((input_ids == image_token_id).sum()) // tokens_per_crop


def probe(batch, image_token_id: int, tokens_per_crop: int) -> dict:
    """The probed sample of a 2-pack micro-batch: its row, span, the 1-row micro-batch and the sample alone."""
    ids, pos, tgt, pixels = batch.input_ids, batch.position_ids, batch.targets, batch.pixel_values
    if ids.shape[0] != 2 or pos is None:
        raise ValueError(f"need a packed micro-batch of 2 packs, got {tuple(ids.shape)} (packed: {pos is not None})")
    row = 1
    segs = _segments(pos[row], tgt[row])
    if len(segs) < 2:
        raise ValueError("the second pack holds one sample: use a longer pack_length")
    a, b = segs[-1]
    before_row = _crops(ids[:row], image_token_id, tokens_per_crop)
    in_row = _crops(ids[row], image_token_id, tokens_per_crop)
    before = before_row + _crops(ids[row, :a], image_token_id, tokens_per_crop)
    mine = _crops(ids[row, a:b], image_token_id, tokens_per_crop)

    def cut(lo, n):
        return None if pixels is None or n == 0 else pixels[lo : lo + n]

    one = batch.replace(input_ids=ids[row : row + 1], position_ids=pos[row : row + 1], targets=tgt[row : row + 1],
                        labels=batch.labels[row : row + 1], pixel_values=cut(before_row, in_row), target_weights=None)
    alone = batch.replace(input_ids=ids[row : row + 1, a:b], targets=tgt[row : row + 1, a:b],
                          labels=batch.labels[row : row + 1, a:b], attention_mask=None, position_ids=None,
                          pixel_values=cut(before, mine), target_weights=None)
    return {"row": row, "span": (a, b), "one_row": one, "alone": alone,
            "supervised": int((tgt[row, a:b] != IGNORE).sum())}


def _loss(model, batch: dict, row: int | None, span: tuple[int, int] | None, device, dtype):
    """(the probed sample's loss sum, its logits at its supervised positions [n, vocab], float32)."""
    from parsit_train.train import forward_loss

    b = batch
    keep = b.targets != IGNORE
    mine = keep.clone()
    if span is not None:
        w = torch.zeros(b.targets.shape, dtype=torch.float32)
        w[row, span[0] : span[1]] = 1.0
        b = b.replace(target_weights=w)
        mine &= w.bool()
    seen = []
    hook = model.lm_head.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().float()))
    try:
        with torch.no_grad():
            loss = float(forward_loss(model, b, device, dtype))
    finally:
        hook.remove()
    logits = seen[0].reshape(-1, seen[0].shape[-1])  # the kept positions, row-major (as forward_loss keeps them)
    return loss, logits[mine.reshape(-1)[keep.reshape(-1)].to(logits.device)].cpu()


def pack_isolation(model, batch: dict, image_token_id: int, device, dtype) -> list[dict]:
    """Rows of the check for ``model`` (its attention implementation as configured) on a 2-pack batch."""
    import parsit_train.train as train_module
    from parsit_train.compat import packs_need_one_row

    vc = model.config.vision_config
    p = probe(batch, image_token_id, (vc.image_size // vc.patch_size) ** 2)
    n = max(1, p["supervised"])
    attn = model.config.text_config._attn_implementation
    alone, alone_logits = _loss(model, p["alone"], None, None, device, dtype)
    feeds = [("2 packs", batch, p["row"]), ("1 pack", p["one_row"], 0)]
    results = [(label, *_loss(model, b, r, p["span"], device, dtype)) for label, b, r in feeds]
    if packs_need_one_row(model):  # the path before the fix, for comparison
        saved = train_module.packs_need_one_row
        train_module.packs_need_one_row = lambda _model: False
        try:
            results.append(("2 packs, rows kept (old path)", *_loss(model, batch, p["row"], p["span"], device, dtype)))
        finally:
            train_module.packs_need_one_row = saved
    scale = float(alone_logits.abs().max())
    return [{"attention": attn, "feed": label, "loss": loss / n, "alone": alone / n, "supervised": p["supervised"],
             "rel_diff": abs(loss - alone) / max(abs(alone), 1e-12),
             "max_logit_diff": float((logits - alone_logits).abs().max()), "logit_scale": scale}
            for label, loss, logits in results]


def format_rows(rows: list[dict], tolerance: float) -> str:
    """The table; ``tolerance``: the largest logit difference (in pack vs alone), relative to the largest
    logit, still counted as isolated."""
    lines = [f"{'attention':<20}{'feed':<32}{'loss in pack':>13}{'alone':>10}{'loss rel diff':>14}"
             f"{'max |logit diff|':>17}{'/ max |logit|':>14}  verdict"]
    for r in rows:
        rel = r["max_logit_diff"] / max(r["logit_scale"], 1e-12)
        leak = rel > tolerance
        verdict = ("leaks (expected)" if leak else "no leak seen") if "old path" in r["feed"] else \
            ("LEAK" if leak else "isolated")
        lines.append(f"{r['attention']:<20}{r['feed']:<32}{r['loss']:>13.5f}{r['alone']:>10.5f}{r['rel_diff']:>14.2e}"
                     f"{r['max_logit_diff']:>17.2e}{rel:>14.2e}  {verdict}")
    return "\n".join(lines)
