"""The DataLoader end to end, with real worker processes: reproducible, resumable, seeded per worker."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import torch
from train_support import QWEN_IMAGE_PAD, open_loader
from torch.utils.data import DataLoader, Dataset

from parsit_train.data import seed_worker

pytestmark = pytest.mark.timeout(180)


def _loader(builds, tok_path, **kw):
    args = dict(weights=[1.0, 0.5], tokenizer_path=tok_path, image_token_id=QWEN_IMAGE_PAD, batch_size=3,
                max_length=512, seed=11, num_workers=2, group_by_length=True, group_size=12)
    args.update(kw)
    return open_loader([builds["a"], builds["b"]], **args)


def _ids(batches):
    return [b.sample_ids for b in batches]


def test_same_seed_same_batches(builds, tok_path):
    loader, sampler = _loader(builds, tok_path)
    first = list(loader)
    second = list(_loader(builds, tok_path)[0])
    assert len(first) == (40 + 10) // 3 and _ids(first) == _ids(second)
    for x, y in zip(first, second):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
        assert (x.pixel_values is None and y.pixel_values is None) or torch.equal(x.pixel_values, y.pixel_values)
    assert sampler.state_dict()["epoch"] == 1  # a full pass moves to the next epoch
    assert _ids(list(loader)) != _ids(first)  # ... which has its own order
    other = list(_loader(builds, tok_path, seed=12)[0])
    assert _ids(other) != _ids(first)


def test_batches_are_well_formed(builds, tok_path):
    loader, _ = _loader(builds, tok_path, num_workers=0)
    for batch in loader:
        n_images = int((batch.input_ids == QWEN_IMAGE_PAD).sum()) // 4
        assert (batch.pixel_values is None) == (n_images == 0)
        if n_images:
            assert batch.pixel_values.shape == (n_images, 3, 28, 28)
        assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape
        assert batch.num_tokens == int(batch.attention_mask.sum())


def test_interrupted_run_resumes_with_exactly_the_remaining_batches(builds, tok_path):
    loader, _ = _loader(builds, tok_path)
    epoch0, epoch1 = list(loader), list(loader)
    # interrupt in the middle of epoch 1, after the workers have prefetched batches beyond it
    loader, sampler = _loader(builds, tok_path)
    assert _ids(list(loader)) == _ids(epoch0)
    taken = []
    for batch in loader:
        taken.append(batch)
        if len(taken) == 5:
            break
    state = sampler.state_dict()
    assert (state["epoch"], state["consumed_samples"]) == (1, 15)
    resumed, rsampler = _loader(builds, tok_path)
    rsampler.load_state_dict(state)
    rsampler.set_epoch(1)  # what a training loop does at the top of the epoch: keeps the position
    rest = list(resumed)
    assert _ids(taken) + _ids(rest) == _ids(epoch1)
    assert rsampler.state_dict()["epoch"] == 2
    # the same loader, iterated again after the break, also continues where the caller stopped
    assert _ids(list(loader)) == _ids(rest)


def test_resume_with_another_world_size(builds, tok_path):
    def run(world, batch, state=None, stop=None):
        loaders = [_loader(builds, tok_path, rank=r, world_size=world, batch_size=batch, num_workers=1)
                   for r in range(world)]
        if state:
            for _, s in loaders:
                s.load_state_dict(state)
        its = [iter(lo) for lo, _ in loaders]
        seen, steps = [], 0
        while stop is None or steps < stop:
            try:
                step = [next(it) for it in its]
            except StopIteration:
                break
            seen.extend(i for b in step for i in b.sample_ids)
            steps += 1
        return seen, loaders[0][1].state_dict()

    full, _ = run(1, 2)
    before, state = run(2, 2, stop=3)  # 3 steps of 2 ranks x 2 samples
    after, _ = run(3, 1, state=state)
    assert before == full[:12]
    assert before + after == full[: len(before) + len(after)] and len(after) == (len(full) - 12) // 3 * 3  # drop_last


class _Probe(Dataset):
    """Each item reports which worker made it and one draw from each random stream."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        info = torch.utils.data.get_worker_info()
        return (info.id, random.random(), float(np.random.rand()), float(torch.rand(1)))


def _draws(seed, rank):
    loader = DataLoader(_Probe(), batch_size=None, num_workers=2,
                        worker_init_fn=functools.partial(seed_worker, seed=seed, rank=rank))
    return list(loader)


def test_workers_are_seeded_per_seed_rank_and_worker():
    a = _draws(0, 0)
    assert a == _draws(0, 0)  # the same on rerun
    by_worker = {w: [d[1:] for d in a if d[0] == w] for w in (0, 1)}
    streams = [[d[k] for d in by_worker[w]] for w in (0, 1) for k in range(3)]
    assert len({tuple(s) for s in streams}) == 6  # python, numpy, torch differ, and differ per worker
    other_rank, other_seed = _draws(0, 1), _draws(1, 0)
    assert {tuple(d[1:]) for d in a}.isdisjoint({tuple(d[1:]) for d in other_rank})
    assert {tuple(d[1:]) for d in a}.isdisjoint({tuple(d[1:]) for d in other_seed})


def test_factory_wires_seeded_persistent_prefetching_workers(builds, tok_path):
    loader, _ = _loader(builds, tok_path, seed=4, rank=1, world_size=2)
    dl = loader.dataloader
    assert dl.worker_init_fn.func is seed_worker and dl.worker_init_fn.keywords == {"seed": 4, "rank": 1}
    assert dl.persistent_workers and dl.prefetch_factor == 4 and dl.num_workers == 2
    assert dl.pin_memory == torch.cuda.is_available()
    serial, _ = _loader(builds, tok_path, num_workers=0)
    assert serial.dataloader.prefetch_factor is None and not serial.dataloader.persistent_workers
