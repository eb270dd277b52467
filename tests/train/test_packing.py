"""Packing: the plan (nothing dropped, nothing split, world-size independent, resumable) and exact isolation
of a pack's samples through the trainer's own forward path (tiny model, CPU, fp32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import tiny_config
from train_support import QWEN_IMAGE_PAD

from parsit_data.errors import ParsitError
from parsit_train.data import ResumableBatchSampler
from parsit_train.data.collator import Collator
from parsit_train.data.dataset import ShardDataset
from parsit_train.data.images import ImageProcessor
from parsit_train.data.packing import balance, packed_utilisation, padded_utilisation, plan_packs
from parsit_train.data.sampler import DataPosition

pytestmark = pytest.mark.timeout(120)

N = 300
RNG = np.random.default_rng(0)
LENGTHS = RNG.integers(5, 200, N)
IMAGES = RNG.integers(0, 4, N) * (RNG.random(N) < 0.6)
SUPERVISED = RNG.integers(0, 40, N)


# --- the plan -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window", [7, 64, 10_000])
def test_plan_keeps_every_sample_once_never_overflows_and_respects_the_image_cap(window):
    order = np.concatenate([np.arange(N), np.arange(0, N, 3)])  # weights: a third of the rows twice
    plan = plan_packs(order, LENGTHS, IMAGES, 256, max_images=4, window=window, rng=np.random.default_rng(1))
    assert sorted(plan.members.tolist()) == sorted(order.tolist())  # nothing dropped, nothing added
    for k in range(len(plan)):
        members = plan.pack(k)
        assert LENGTHS[members].sum() == plan.tokens[k] <= 256
        assert IMAGES[members].sum() == plan.images[k]
        assert plan.images[k] <= 4 or len(members) == 1
    assert packed_utilisation(plan, 256) > padded_utilisation(LENGTHS[order], 4)
    with pytest.raises(ParsitError, match="longer than pack_length=100"):
        plan_packs(order, LENGTHS, IMAGES, 100)


def test_members_of_a_pack_keep_the_shuffled_order():
    order = RNG.permutation(N)
    plan = plan_packs(order, LENGTHS, IMAGES, 512, window=N)
    where = np.empty(N, dtype=np.int64)
    where[order] = np.arange(N)
    for k in range(len(plan)):
        assert (np.diff(where[plan.pack(k)]) > 0).all()


def test_balance_evens_tokens_and_visual_tokens_across_ranks():
    work = np.array([100, 90, 80, 20, 10, 5, 60, 50])
    visual = np.array([0, 64, 0, 64, 0, 0, 64, 0])
    slots = balance(work, visual, 4, 2)
    assert sorted(slots.ravel().tolist()) == list(range(8))
    loads = (work + visual)[slots].sum(axis=1)
    assert loads.max() - loads.min() <= 50
    assert balance(work, visual, 1, 8).tolist() == [list(range(8))]


def _sampler(world, rank, batch=2, **kw):
    return ResumableBatchSampler([200, 100], batch, rank=rank, world_size=world, seed=5, weights=[1.0, 1.5],
                                 lengths=LENGTHS, image_counts=IMAGES, visual_tokens=IMAGES * 16,
                                 supervised=SUPERVISED, pack_length=256, max_images_per_pack=5, pack_window=64, **kw)


def _packs(world, batch=2, k=None, state=None):
    """Global micro-batches as sets of packs (tuples of indices), advancing like the loader does."""
    samplers = [_sampler(world, r, batch) for r in range(world)]
    if state is not None:
        for s in samplers:
            s.load_state_dict(state)
    its = [iter(s) for s in samplers]
    out = []
    while k is None or len(out) < k:
        try:
            parts = [next(it) for it in its]
        except StopIteration:
            break
        for s in samplers:
            s.advance()
        packs = []
        for part in parts:
            by_slot: dict[int, list[int]] = {}
            for i, slot in part:
                by_slot.setdefault(slot, []).append(i)
            assert len(by_slot) == batch
            packs.extend(tuple(v) for v in by_slot.values())
        out.append(packs)
    return out, samplers[0]


def test_packs_are_the_same_for_any_world_size_and_resume_in_another():
    one, s1 = _packs(1, batch=4)
    two, _ = _packs(2, batch=2)
    flat = lambda steps: [p for st in steps for p in st]  # noqa: E731
    plan = s1.epoch_plan(0)
    assert sorted(flat(one)) == sorted(flat(two))  # the same packs ...
    assert [sorted(a) for a in one] == [sorted(b) for b in two]  # ... in the same global micro-batches
    assert len(flat(one)) == len(plan) // 4 * 4
    # stop after 3 global micro-batches of 2 ranks x 2, resume with 4 ranks x 1: exactly the unseen packs
    seen, first = _packs(2, batch=2, k=3)
    state = first.state_dict()
    assert state["pack_length"] == 256 and state["consumed_samples"] == 12
    rest, _ = _packs(4, batch=1, state=state)
    assert sorted(flat(seen) + flat(rest)) == sorted(flat(one))
    assert not set(flat(seen)) & set(flat(rest))


def test_step_totals_are_the_supervised_tokens_of_the_step_on_every_rank():
    samplers = [_sampler(2, r) for r in range(2)]
    want = []
    its = [iter(s) for s in samplers]
    for _ in range(3):  # 3 micro-batches of the first step
        for it in its:
            want.extend(i for i, _slot in next(it))
    for s in samplers:
        tokens, samples, indices = s.step_totals(0, 0, 3)
        assert sorted(indices) == sorted(want)
        assert tokens == int(SUPERVISED[want].sum()) and samples == int((SUPERVISED[want] > 0).sum())
    # a step that runs past the epoch's end continues in the next epoch, like the loader
    s = samplers[0]
    last = s.epoch_units(0) - s.global_batch_size
    _, _, crossing = s.step_totals(0, last, 2)
    assert len(crossing) == sum(len(p) for p in [s.epoch_plan(0).pack(u) for u in range(last, last + 4)]
                                + [s.epoch_plan(1).pack(u) for u in range(4)])


def test_a_position_on_another_build_or_packing_is_refused():
    s = _sampler(1, 0, build_ids=["hash-a", "hash-b"])
    s.advance(2)
    state = s.state_dict()
    pos = DataPosition.from_dict(state)
    assert pos.build_ids == ["hash-a", "hash-b"] and pos.consumed_samples == 4
    refused = r"build_ids: checkpoint \['hash-a', 'hash-b'\], this run \['hash-a', 'hash-c'\]"
    with pytest.raises(ParsitError, match=refused):
        _sampler(1, 0, build_ids=["hash-a", "hash-c"]).load_state_dict(state)  # same sizes, rebuilt
    other = ResumableBatchSampler([200, 100], 2, seed=5, weights=[1.0, 1.5], build_ids=["hash-a", "hash-b"])
    with pytest.raises(ParsitError, match=r"pack_length: checkpoint 256, this run None"):
        other.load_state_dict(state)
    with pytest.raises(ParsitError, match="sampler state version 1"):
        other.load_state_dict({**state, "version": 1})


# --- exact isolation through the trainer's forward path -------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    from parsit_train.config import parse_config
    from parsit_train.model import build_model

    cfg = parse_config(tiny_config(Path("/b"), Path("/o")), Path("/"))
    torch.manual_seed(0)
    return build_model(cfg.model).float()


@pytest.fixture(scope="module")
def data(builds, tok_path):
    ds = ShardDataset([builds["a"]], tok_path)
    ds.image_processor = ImageProcessor(ds.vision)
    return ds


def _items(data, with_images):
    has = data.has_image()
    img, txt = np.flatnonzero(has), np.flatnonzero(~has)
    picks = [int(img[0]), int(txt[1]), int(img[3])] if with_images else [int(txt[0]), int(txt[2])]
    return [data[i] for i in picks]


def _collator(data, **kw):
    return Collator(data.pad_token_id, QWEN_IMAGE_PAD, 512, image_processor=data.image_processor, **kw)


def _loss_and_grads(model, batch, weights=None):
    from parsit_train.train import forward_loss

    model.zero_grad()
    b = batch if weights is None else batch.replace(target_weights=weights)
    loss = forward_loss(model, b, "cpu", torch.float32)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


def test_every_sample_of_a_pack_has_the_loss_and_gradient_it_has_alone(tiny_model, data):
    items = _items(data, with_images=True)  # image, text only, image
    packed = _collator(data, pack_length=512)([{**it, "pack": 0} for it in items])
    assert packed.attention_mask is None and packed.input_ids.shape[0] == 1
    # the pack's images in order: the first sample's crops, then the third's
    crops = [it["image_crops"].shape[0] for it in items if it["num_image_tokens"]]
    assert packed.pixel_values.shape[0] == sum(crops)
    starts = np.flatnonzero(packed.position_ids[0].numpy() == 0)
    bounds = list(starts[: len(items)]) + [packed.num_tokens]
    assert [b - a for a, b in zip(bounds, bounds[1:])] == [
        len(it["input_ids"]) - len(it["num_image_tokens"]) + sum(it["num_image_tokens"]) for it in items]
    targets = packed.targets[0]
    for k, it in enumerate(items):
        alone = _collator(data)([it])
        a, b = bounds[k], bounds[k + 1]
        # no target crosses a boundary: the last position of every sample predicts nothing
        assert targets[b - 1] == -100
        assert torch.equal(targets[a : b - 1], alone.labels[0, 1 : b - a])
        mine = torch.zeros_like(targets, dtype=torch.float32)
        mine[a:b] = 1.0
        loss_p, grads_p = _loss_and_grads(tiny_model, packed, mine[None])
        loss_a, grads_a = _loss_and_grads(tiny_model, alone)
        assert loss_a > 0
        assert loss_p == pytest.approx(loss_a, rel=1e-5, abs=1e-6), it["sample_id"]
        assert grads_a.keys() <= grads_p.keys()
        for n, g in grads_p.items():  # a text sample alone leaves the vision tower without a gradient: zero
            want = grads_a.get(n, torch.zeros_like(g))
            # float32 sums over a 3-sample pack and over one sample alone differ in order: measured up to
            # 1.5e-6 on a tensor whose largest element is 0.2 (7.6e-6 of its scale; torch 2.13 CPU). A leak
            # across samples moves logits by more than 1e-3 (next test), gradients by their own order.
            scale = float(want.abs().max())
            torch.testing.assert_close(g, want, rtol=1e-5, atol=max(1e-6, 5e-5 * scale),
                                       msg=lambda m, it=it, n=n: f"{it['sample_id']} {n}: {m}")


def test_a_cache_or_an_attention_mask_would_attend_across_samples(tiny_model, data):
    """What the trainer's call path (use_cache=False, no mask) avoids: transformers' packed masking is off
    with a KV cache (the config default) or with a 2-D mask, and the second sample then sees the first."""
    items = _items(data, with_images=False)
    packed = _collator(data, pack_length=512)([{**it, "pack": 0} for it in items])
    alone = _collator(data)([items[1]])
    n0 = len(items[0]["input_ids"])
    n1 = len(items[1]["input_ids"])
    common = dict(input_ids=packed.input_ids, position_ids=packed.position_ids)
    with torch.no_grad():
        ref = tiny_model(input_ids=alone.input_ids, use_cache=False).logits[0, :n1]

        def second(**kw):
            return tiny_model(**common, **kw).logits[0, n0 : n0 + n1]

        torch.testing.assert_close(second(use_cache=False), ref, rtol=1e-5, atol=1e-5)
        ones = torch.ones_like(packed.input_ids)
        for leaky in ({}, {"use_cache": True}, {"use_cache": False, "attention_mask": ones}):
            assert (second(**leaky) - ref).abs().max() > 1e-3, leaky


def test_sample_weighting_gives_each_sample_the_same_weight(data):
    items = _items(data, with_images=True)
    batch = _collator(data, pack_length=512, loss_weighting="sample")([{**it, "pack": 0} for it in items])
    w = batch.target_weights[0]
    starts = np.flatnonzero(batch.position_ids[0].numpy() == 0)
    bounds = list(starts[: len(items)]) + [batch.num_tokens]
    for a, b in zip(bounds, bounds[1:]):
        assert float(w[a:b].sum()) == pytest.approx(1.0)
    assert batch.num_samples_supervised == 3


def test_a_text_only_pack_gets_a_blank_image_in_its_own_trailing_segment(tiny_model, data):
    from parsit_train.train import forward_loss

    items = _items(data, with_images=False)
    plain = _collator(data, pack_length=512)([{**it, "pack": 0} for it in items])
    fed = _collator(data, pack_length=512, blank_image=(28, 4))([{**it, "pack": 0} for it in items])
    assert plain.pixel_values is None and fed.pixel_values.shape == (1, 3, 28, 28)
    real = plain.num_tokens
    assert fed.position_ids[0, real:].tolist() == [0, 1, 2, 3]
    with torch.no_grad():
        assert forward_loss(tiny_model, fed, "cpu", torch.float32).item() == pytest.approx(
            forward_loss(tiny_model, plain, "cpu", torch.float32).item(), rel=1e-6)


# --- parsit-train plan ----------------------------------------------------------------------------------
def test_plan_report_and_command(builds, tok_path):
    from typer.testing import CliRunner

    from parsit_train.cli.main import app
    from parsit_train.plan import plan_report

    r = plan_report([builds["a"], builds["b"]], micro_batch_size=4, pack_length=256, tokenizer=str(tok_path))
    assert r.rows == r.samples == 60
    assert 0 < r.padded <= r.grouped <= 1.0 and r.packed > r.padded
    assert r.packs * 256 >= r.tokens
    res = CliRunner().invoke(app, ["plan", str(builds["a"]), "-b", "4", "-p", "256", "--tokenizer", str(tok_path)])
    assert res.exit_code == 0, res.output
    assert "packed at 256" in res.output and "length-grouped" in res.output
