"""The global order is a function of (seed, epoch); a resumed run, any world size, sees exactly the rest."""

from __future__ import annotations

import numpy as np
import pytest

from parsit_data.errors import ParsitError
from parsit_train.data import ResumableBatchSampler

SIZES = [37, 26]  # two builds


def _samplers(world, batch, **kw):
    return [ResumableBatchSampler(SIZES, batch, rank=r, world_size=world, **kw) for r in range(world)]


def _steps(samplers, n=None):
    """Global steps: the concatenation of each rank's batch, advancing every sampler like the loader does."""
    its = [iter(s) for s in samplers]
    steps = []
    while n is None or len(steps) < n:
        try:
            step = [next(it) for it in its]
        except StopIteration:
            break
        for s in samplers:
            s.advance()
        steps.append([i for b in step for i in b])
    return steps


def test_same_seed_same_batches_other_seed_or_epoch_other_order():
    a, b = _steps(_samplers(2, 4, seed=7)), _steps(_samplers(2, 4, seed=7))
    assert a == b and len(a) == 63 // 8
    assert _steps(_samplers(2, 4, seed=8)) != a
    s = ResumableBatchSampler(SIZES, 4, seed=7)
    e0, e1 = s.epoch_order(0), s.epoch_order(1)
    assert sorted(e0.tolist()) == sorted(e1.tolist()) == list(range(63)) and e0.tolist() != e1.tolist()


def test_ranks_read_disjoint_contiguous_blocks_of_the_global_order():
    samplers = _samplers(3, 2, seed=1)
    order = samplers[0].epoch_order().tolist()
    steps = _steps(samplers)
    assert [i for st in steps for i in st] == order[: len(steps) * 6]


@pytest.mark.parametrize(("world", "batch", "world2", "batch2", "k"),
                         [(2, 3, 2, 3, 4), (2, 3, 3, 3, 4), (4, 2, 1, 5, 3), (1, 4, 2, 2, 5), (3, 2, 2, 4, 1)])
@pytest.mark.parametrize("group", [False, True])
def test_resume_continues_with_exactly_the_unseen_samples(world, batch, world2, batch2, k, group):
    rng = np.random.default_rng(0)
    extra = dict(group_by_length=group, group_size=12, lengths=rng.integers(5, 500, 63),
                 has_image=rng.random(63) < 0.6) if group else {}
    full = _steps(_samplers(world, batch, seed=3, **extra))
    first = _samplers(world, batch, seed=3, **extra)
    seen = _steps(first, k)
    assert seen == full[:k]
    state = first[0].state_dict()
    assert all(s.state_dict() == state for s in first) and state["consumed_samples"] == k * world * batch
    resumed = _samplers(world2, batch2, seed=3, **extra)
    for s in resumed:
        s.load_state_dict(state)
    rest = _steps(resumed)
    flat_seen = [i for st in seen for i in st]
    flat_rest = [i for st in rest for i in st]
    order = first[0].epoch_order().tolist()
    # the resumed run continues the same global order where the interrupted one stopped ...
    assert flat_seen + flat_rest == order[: len(flat_seen) + len(flat_rest)]
    # ... without repeating anything, and drops only a tail shorter than one of its global batches
    assert not set(flat_seen) & set(flat_rest)
    assert 0 <= len(order) - len(flat_seen) - len(flat_rest) < world2 * batch2
    if (world2, batch2) == (world, batch):
        assert rest == full[k:]


def test_epochs_advance_and_a_finished_epoch_resumes_into_the_next():
    s = ResumableBatchSampler(SIZES, 5, seed=0)
    _steps([s])
    s.end_epoch()
    assert s.state_dict()["epoch"] == 1 and s.state_dict()["consumed_samples"] == 0
    s.set_epoch(1)  # the training loop's own call: a no-op here
    assert next(iter(s)) == s.epoch_order(1)[:5].tolist()
    s.advance()
    s.set_epoch(1)
    assert s.consumed == 5
    s.set_epoch(2)
    assert s.consumed == 0


def test_grouping_gives_single_modality_chunks_sorted_by_length_independent_of_world_size():
    rng = np.random.default_rng(1)
    lengths, has_image = rng.integers(1, 1000, 63), rng.random(63) < 0.5
    kw = dict(group_by_length=True, group_size=8, lengths=lengths, has_image=has_image, seed=5)
    order = ResumableBatchSampler(SIZES, 2, world_size=1, **kw).epoch_order()
    assert order.tolist() == ResumableBatchSampler(SIZES, 2, world_size=4, rank=3, **kw).epoch_order().tolist()
    assert sorted(order.tolist()) == list(range(63))
    full_chunks = len(order) // 8 - 1  # the mixed leftovers go last
    for c in range(full_chunks):
        chunk = order[c * 8 : (c + 1) * 8]
        assert len(set(has_image[chunk].tolist())) == 1
        assert (np.diff(lengths[chunk]) <= 0).all()


def test_mixture_weights_are_per_epoch_multiplicities():
    s = ResumableBatchSampler(SIZES, 1, weights=[0.5, 2.0], seed=2)
    order = s.epoch_order(0)
    a, b = order[order < 37], order[order >= 37]
    assert len(a) == round(0.5 * 37) and len(set(a.tolist())) == len(a)
    assert sorted(b.tolist()) == sorted(list(range(37, 63)) * 2)
    assert set(s.epoch_order(1)[s.epoch_order(1) < 37].tolist()) != set(a.tolist())  # a new half each epoch
    with pytest.raises(ParsitError, match="2 mixture weights for 1 builds"):
        ResumableBatchSampler([5], 1, weights=[1, 1])


def test_without_drop_last_every_rank_gets_full_batches_and_every_sample_is_seen():
    samplers = _samplers(3, 4, seed=0, drop_last=False)
    assert len(samplers[0]) == -(-63 // 12)
    steps = _steps(samplers)
    assert all(len(st) == 12 for st in steps)
    assert set(i for st in steps for i in st) == set(range(63))


def test_a_state_from_another_order_is_refused():
    s = ResumableBatchSampler(SIZES, 2, seed=1)
    s.advance(3)
    with pytest.raises(ParsitError, match=r"the sample order would differ: seed: checkpoint 1, this run 2"):
        ResumableBatchSampler(SIZES, 2, seed=2).load_state_dict(s.state_dict())
    with pytest.raises(ParsitError, match=r"build_sizes: checkpoint \[37, 26\], this run \[37, 27\]"):
        ResumableBatchSampler([37, 27], 2, seed=1).load_state_dict(s.state_dict())
