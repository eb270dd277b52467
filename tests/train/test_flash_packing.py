"""Packing isolation under flash_attention_2, through transformers' REAL flash dispatch on CPU.

No flash_attn package here: the two kernels transformers calls (``flash_attn_func`` and
``flash_attn_varlen_func``) are replaced by exact torch stand-ins (sdpa per sequence / per segment:
``flash_standins``), and everything around them is transformers' own code. The fault: transformers 5.25
detects packed sequences from ``position_ids`` only for a one-row batch, so with two packs per
micro-batch the samples of a pack attended to each other.
"""

from __future__ import annotations

import copy
from pathlib import Path

import flash_standins
import numpy as np
import pytest
import torch
from train_helpers import tiny_config
from train_support import QWEN_IMAGE_PAD

from parsit_train.data.collator import Collator, one_row
from parsit_train.data.dataset import ShardDataset
from parsit_train.data.images import ImageProcessor
from parsit_train.train import forward_loss


@pytest.fixture
def flash_kernels(monkeypatch):
    return flash_standins.install(monkeypatch)


@pytest.fixture(scope="module")
def models():
    """The tiny LLaVA model with sdpa and the same weights with flash_attention_2 (every sub-config)."""
    from parsit_train.compat import set_attn_implementation
    from parsit_train.config import parse_config
    from parsit_train.model import build_model

    cfg = parse_config(tiny_config(Path("/b"), Path("/o")), Path("/"))
    torch.manual_seed(0)
    sdpa = build_model(cfg.model).float().eval()
    flash = copy.deepcopy(sdpa)
    for c in (flash.config, flash.config.text_config, flash.config.vision_config):
        set_attn_implementation(c, "flash_attention_2")
    return {"sdpa": sdpa, "flash_attention_2": flash}


@pytest.fixture(scope="module")
def data(builds, tok_path):
    ds = ShardDataset([builds["a"]], tok_path)
    ds.image_processor = ImageProcessor(ds.vision)
    return ds


def _collator(data, **kw):
    return Collator(data.pad_token_id, QWEN_IMAGE_PAD, 512, image_processor=data.image_processor, **kw)


def _packs(data):
    """Two packs of two samples each (image + text, text + image): rows of different lengths."""
    has = data.has_image()
    img, txt = np.flatnonzero(has), np.flatnonzero(~has)
    return [[data[int(img[0])], data[int(txt[1])]], [data[int(txt[3])], data[int(img[2])]]]


@pytest.mark.parametrize("impl", ["flash_attention_2", "sdpa"])
@pytest.mark.parametrize("rows", [1, 2])
def test_a_sample_in_a_pack_has_its_loss_alone_for_every_micro_batch_shape(models, data, flash_kernels, impl, rows):
    model = models[impl]
    packs = _packs(data)[:rows]
    items = [{**it, "pack": p} for p, pack in enumerate(packs) for it in pack]
    batch = _collator(data, pack_length=512)(items)
    assert batch.input_ids.shape[0] == rows and batch.attention_mask is None
    with torch.no_grad():
        for p, pack in enumerate(packs):
            sizes = [len(it["input_ids"]) - len(it["num_image_tokens"]) + sum(it["num_image_tokens"]) for it in pack]
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            assert np.flatnonzero(batch.position_ids[p].numpy() == 0)[: len(pack)].tolist() == bounds[:-1].tolist()
            for k, it in enumerate(pack):
                a, b = int(bounds[k]), int(bounds[k + 1])
                mine = torch.zeros_like(batch.targets, dtype=torch.float32)
                mine[p, a:b] = 1.0
                in_pack = forward_loss(model, batch.replace(target_weights=mine), "cpu", torch.float32).item()
                alone = forward_loss(model, _collator(data)([it]), "cpu", torch.float32).item()
                assert alone > 0
                assert in_pack == pytest.approx(alone, rel=1e-5, abs=1e-6), (impl, rows, p, it["sample_id"])
    if impl == "flash_attention_2":  # the language model's packed batches went through the varlen kernel
        assert flash_kernels["varlen"] > 0


def test_one_row_keeps_logits_of_every_position_under_flash(models, data, flash_kernels):
    """The whole [2, T] packed batch, flattened, gives every position the logits of the sdpa model's
    block-causal attention on the [2, T] batch (sdpa isolates packs of any batch shape)."""
    items = [{**it, "pack": p} for p, pack in enumerate(_packs(data)) for it in pack]
    batch = _collator(data, pack_length=512)(items)
    flat = one_row(batch)
    assert flat.input_ids.shape == (1, batch.input_ids.numel())
    with torch.no_grad():
        ref = models["sdpa"](input_ids=batch.input_ids, position_ids=batch.position_ids,
                             pixel_values=batch.pixel_values, use_cache=False).logits
        got = models["flash_attention_2"](input_ids=flat.input_ids, position_ids=flat.position_ids,
                                          pixel_values=flat.pixel_values, use_cache=False).logits
        torch.testing.assert_close(got.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)
        # what the trainer used to hand flash attention: the [2, T] batch, whose packs leak
        leaky = models["flash_attention_2"](input_ids=batch.input_ids, position_ids=batch.position_ids,
                                            pixel_values=batch.pixel_values, use_cache=False).logits
        assert (leaky - ref).abs().max() > 1e-3


def test_a_sample_in_a_two_pack_flash_batch_has_its_gradient_alone(models, data, flash_kernels):
    """The backward too: the second sample of the second pack, through the flash dispatch, gets the
    gradient it gets alone (rows kept as [2, T], it would also get the first sample's influence)."""
    model = models["flash_attention_2"]
    packs = _packs(data)
    batch = _collator(data, pack_length=512)([{**it, "pack": p} for p, pack in enumerate(packs) for it in pack])
    first, it = packs[1]
    a = len(first["input_ids"]) - len(first["num_image_tokens"]) + sum(first["num_image_tokens"])
    b = a + len(it["input_ids"]) - len(it["num_image_tokens"]) + sum(it["num_image_tokens"])
    mine = torch.zeros_like(batch.targets, dtype=torch.float32)
    mine[1, a:b] = 1.0

    def grads(b):
        model.zero_grad()
        forward_loss(model, b, "cpu", torch.float32).backward()
        return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    in_pack, alone = grads(batch.replace(target_weights=mine)), grads(_collator(data)([it]))
    model.zero_grad()
    assert alone.keys() <= in_pack.keys()
    for n, g in in_pack.items():  # float32 summation order differs (see test_packing): relative to the scale
        want = alone.get(n, torch.zeros_like(g))
        torch.testing.assert_close(g, want, rtol=1e-5, atol=max(1e-6, 5e-5 * float(want.abs().max())),
                                   msg=lambda m, n=n: f"{n}: {m}")
