"""Batches: image tokens expanded in place, attention from lengths, no batch over max_length."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_support import QWEN_EOS, QWEN_IMAGE_PAD, QWEN_PAD

from parsit_data.format import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from parsit_data.errors import ParsitError
from parsit_train.data import Collator, ImageProcessor, ShardDataset


def _item(ids, labels, n_tok=(), sid="s", crops=None):
    item = {"sample_id": sid, "input_ids": np.asarray(ids, dtype=np.int32),
            "labels": np.asarray(labels, dtype=np.int32), "num_image_tokens": list(n_tok)}
    if n_tok:
        n = sum(crops or [1] * len(n_tok))
        item["image_crops"] = np.zeros((n, 28, 28, 3), dtype=np.uint8)
        item["crops_per_image"] = list(crops or [1] * len(n_tok))
    return item


def _proc(tokens):
    return ImageProcessor({"image_size": 28, "patch_size": 14, "tokens_per_image": tokens})


def test_placeholders_expand_to_image_tokens_with_ignored_labels():
    c = Collator(QWEN_PAD, QWEN_IMAGE_PAD, max_length=64, image_processor=_proc(2))
    a = _item([151644, IMAGE_TOKEN_INDEX, 198, 9707, QWEN_EOS], [-100, -100, -100, 9707, QWEN_EOS], [2], "a")
    b = _item([151644, 872, 198, QWEN_EOS], [-100, -100, 198, QWEN_EOS], (), "b")
    out = c([a, b])
    P, I = QWEN_PAD, IGNORE_INDEX
    assert out.input_ids.tolist() == [
        [151644, QWEN_IMAGE_PAD, QWEN_IMAGE_PAD, 198, 9707, QWEN_EOS],
        [151644, 872, 198, QWEN_EOS, P, P],
    ]
    assert out.labels.tolist() == [[I, I, I, I, 9707, QWEN_EOS], [I, I, 198, QWEN_EOS, I, I]]
    assert out.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert out.input_ids.dtype == out.labels.dtype == torch.long
    assert out.pixel_values.shape == (1, 3, 28, 28) and out.pixel_values.dtype == torch.float32
    assert torch.all(out.pixel_values == -1.0)  # black, normalised with SigLIP's mean/std 0.5
    assert out.sample_ids == ("a", "b")
    assert (out.num_tokens, out.num_supervised) == (10, 4)


def test_pad_equal_to_eos_does_not_mask_real_eos():
    c = Collator(pad_token_id=QWEN_EOS, image_token_id=QWEN_IMAGE_PAD, max_length=16)
    long = _item([872, QWEN_EOS, 198, 9707, QWEN_EOS], [-100, -100, -100, 9707, QWEN_EOS], sid="long")
    short = _item([9707, QWEN_EOS], [9707, QWEN_EOS], sid="short")
    out = c([long, short])
    ids, mask = out.input_ids, out.attention_mask
    assert ids.tolist() == [[872, QWEN_EOS, 198, 9707, QWEN_EOS], [9707, QWEN_EOS, QWEN_EOS, QWEN_EOS, QWEN_EOS]]
    # every real eos is attended to and stays supervised; only the 3 pad positions are masked
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert out.labels.tolist()[1] == [9707, QWEN_EOS, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    assert (ids != QWEN_EOS).long().tolist() != mask.tolist()  # what a mask from ids would have got wrong


def test_over_max_length_is_an_error_not_a_truncation():
    c = Collator(QWEN_PAD, QWEN_IMAGE_PAD, max_length=5, image_processor=_proc(3))
    item = _item([151644, IMAGE_TOKEN_INDEX, 198], [-100, -100, -100], [3], "img")  # 5 tokens: fits
    assert c([item]).input_ids.shape == (1, 5)
    item = _item([151644, IMAGE_TOKEN_INDEX, 198, 9707], [-100, -100, -100, 9707], [3], "too-long")
    with pytest.raises(ParsitError, match=r"sample 'too-long' has 6 tokens with its images expanded, over max_length=5"):
        c([item])


def test_inconsistent_rows_are_refused():
    c = Collator(QWEN_PAD, QWEN_IMAGE_PAD, max_length=64, image_processor=_proc(4))
    two_placeholders = _item([IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX, 9707], [-100, -100, 9707], [4], "x")
    with pytest.raises(ParsitError, match="2 image placeholders but 1 image token counts"):
        c([two_placeholders])
    wrong_geometry = _item([IMAGE_TOKEN_INDEX, 9707], [-100, 9707], [9], "y")
    with pytest.raises(ParsitError, match="counted 9 visual tokens for image 0, the image processor made 1 crops x 4"):
        c([wrong_geometry])
    with pytest.raises(ParsitError, match="equals pad_token_id"):
        Collator(QWEN_PAD, QWEN_PAD, max_length=8)


def test_real_rows_batch_with_one_image_token_per_visual_token(builds, tok_path):
    ds = ShardDataset([builds["a"]], tok_path)
    ds.image_processor = ImageProcessor(ds.vision)
    items = [ds[i] for i in (0, 1, 30, 31)]  # two image rows, two text rows
    out = Collator(ds.pad_token_id, QWEN_IMAGE_PAD, max_length=4096, image_processor=ds.image_processor)(items)
    lengths = ds.lengths()[[0, 1, 30, 31]]
    assert out.attention_mask.sum(1).tolist() == lengths.tolist()  # the build's multimodal length
    assert (out.input_ids == QWEN_IMAGE_PAD).sum(1).tolist() == [4, 4, 0, 0]
    assert not (out.input_ids == IMAGE_TOKEN_INDEX).any()
    assert out.pixel_values.shape == (2, 3, 28, 28)
    row = ds.builds[0]
    for k, i in enumerate((0, 1)):  # the same pixels as processing the embedded image on its own
        raw = ShardDataset([row.root], tok_path)[i]
        ref, _ = ds.image_processor.process_sample(raw["images"], raw["image_sizes"])
        assert torch.allclose(out.pixel_values[k], torch.from_numpy(ref[0]))
    supervised = sum(int((it["labels"] != IGNORE_INDEX).sum()) for it in items)
    assert out.num_supervised == supervised
