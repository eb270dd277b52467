"""OneVision's video path in training: videos of different frame counts in one micro-batch, their features at
exactly the expanded video token positions, images and text beside them; the collator's -201 expansion,
token-order pixels and blank video.

A tiny ``LlavaOnevisionForConditionalGeneration`` from config (crop 56, patch 14: a 4x4 grid pooled to 2x2,
so 4 tokens per frame and ``frames * 4 + 1`` per video)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import TINY_LM  # noqa: E402

from parsit_data.errors import ParsitError  # noqa: E402
from parsit_data.format import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402
from parsit_train.data.video_batch import VIDEO_TOKEN_INDEX, append_blank_video, expand_video, video_pixels  # noqa: E402
from parsit_train.video_model import enable_ragged_videos  # noqa: E402

IMAGE_ID, VIDEO_ID, PAD = 151655, 151656, 151643
CROP, PATCH = 56, 14
PER_FRAME = 4


def _model():
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen3Config, SiglipVisionConfig

    torch.manual_seed(0)
    vc = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=CROP, patch_size=PATCH, vision_use_head=False)
    cfg = LlavaOnevisionConfig(vision_config=vc, text_config=Qwen3Config(**TINY_LM), image_token_index=IMAGE_ID,
                               video_token_index=VIDEO_ID, vision_feature_select_strategy="full",
                               vision_feature_layer=-1, image_grid_pinpoints=[[CROP, CROP]],
                               vision_aspect_ratio="anyres_max_1", tie_word_embeddings=False)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.model.image_newline.normal_()
    return model


def _videos(*frames):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn((n, 3, CROP, CROP), generator=gen) for n in frames]


def test_ragged_videos_are_each_videos_own_features():
    """Videos of 3, 1 and 2 frames in one call: each gets exactly what transformers computes for it alone
    (``frames * 4`` pooled tokens then the newline); a plain tensor still goes to transformers untouched."""
    model = _model()
    videos = _videos(3, 1, 2)
    with torch.no_grad():
        alone = [model.model.get_video_features(v[None], return_dict=True).pooler_output[0] for v in videos]
        enable_ragged_videos(model)
        ragged = model.model.get_video_features(videos, return_dict=True).pooler_output
        plain = model.model.get_video_features(videos[0][None], return_dict=True).pooler_output
    assert [a.shape[0] for a in alone] == [3 * PER_FRAME + 1, PER_FRAME + 1, 2 * PER_FRAME + 1]
    assert ragged.shape == (1, sum(a.shape[0] for a in alone), 32)
    torch.testing.assert_close(ragged[0], torch.cat(alone), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain[0], alone[0], rtol=0, atol=0)


def test_video_features_land_on_the_expanded_video_tokens_beside_an_image():
    """Two packed samples (a 3-frame video, then an image and a 1-frame video): the embeddings the language
    model receives hold video i's own features on the i-th run of video tokens, the image's on the image
    tokens, and the token embeddings everywhere else."""
    model = _model()
    enable_ragged_videos(model)
    videos = _videos(3, 1)
    n0, n1 = 3 * PER_FRAME + 1, PER_FRAME + 1
    ids0 = np.array([151644, 872, VIDEO_TOKEN_INDEX, 3838, 151645])
    ids1 = np.array([151644, IMAGE_TOKEN_INDEX, 198, VIDEO_TOKEN_INDEX, 9707, 151645])
    e0, _ = expand_video(ids0, ids0.copy(), {"sample_id": "a", "num_video_tokens": n0}, VIDEO_ID)
    e1, _ = expand_video(ids1, ids1.copy(), {"sample_id": "b", "num_video_tokens": n1}, VIDEO_ID)
    e1[e1 == IMAGE_TOKEN_INDEX] = IMAGE_ID  # expanded below to the image's own feature count
    image = torch.randn((1, 2, 3, CROP, CROP), generator=torch.Generator().manual_seed(2))  # base + 1x1 grid
    with torch.no_grad():
        img_feats = model.model.get_image_features(image, torch.tensor([[CROP, CROP]]), batch_num_images=torch.tensor([1]),
                                                   return_dict=True).pooler_output[0]
    at = int(np.flatnonzero(e1 == IMAGE_ID)[0])
    e1 = np.concatenate([e1[:at], np.full(img_feats.shape[0], IMAGE_ID), e1[at + 1:]])
    ids = torch.from_numpy(np.concatenate([e0, e1]))[None]
    positions = torch.cat([torch.arange(len(e0)), torch.arange(len(e1))])[None]
    seen = {}
    def keep(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    model.model.language_model.register_forward_pre_hook(keep, with_kwargs=True)
    with torch.no_grad():
        model(input_ids=ids, position_ids=positions, pixel_values=image, image_sizes=torch.tensor([[CROP, CROP]]),
              batch_num_images=torch.tensor([1]), use_cache=False, pixel_values_videos=tuple(videos))
        alone = [type(model.model).get_video_features(model.model, v[None], return_dict=True).pooler_output[0]
                 for v in videos]
        tokens = model.model.get_input_embeddings()(ids)[0]
    embeds = seen["embeds"][0]
    vid = np.flatnonzero(ids[0].numpy() == VIDEO_ID)
    assert len(vid) == n0 + n1
    torch.testing.assert_close(embeds[vid[:n0]], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embeds[vid[n0:]], alone[1], rtol=1e-5, atol=1e-5)
    img = np.flatnonzero(ids[0].numpy() == IMAGE_ID)
    torch.testing.assert_close(embeds[img], img_feats, rtol=1e-5, atol=1e-5)
    text = np.flatnonzero((ids[0].numpy() != VIDEO_ID) & (ids[0].numpy() != IMAGE_ID))
    torch.testing.assert_close(embeds[text], tokens[text], rtol=0, atol=0)


class _Frames:
    """A stand-in for VideoPixels in collator tests: uint8 frames in, float out (x + 0.5)."""

    tokens_per_frame = PER_FRAME

    def normalise(self, frames):
        return frames.to(torch.float32) + 0.5

    def blank(self):
        return torch.zeros((1, 3, 4, 4), dtype=torch.uint8)


def _item(sid, ids, video_frames=0, pack=None, mark=0):
    ids = np.asarray(ids, dtype=np.int32)
    labels = np.where((ids < 0) | (np.arange(len(ids)) < 2), IGNORE_INDEX, ids).astype(np.int32)
    item = {"sample_id": sid, "input_ids": ids, "labels": labels, "num_image_tokens": [], "image_sizes": [],
            "num_video_tokens": video_frames * PER_FRAME + 1 if video_frames else 0}
    if video_frames:
        item["video"] = torch.full((video_frames, 3, 4, 4), mark, dtype=torch.uint8)
    if pack is not None:
        item["pack"] = pack
    return item


def test_collator_expands_the_video_sentinel_and_orders_pixels_as_tokens():
    """Packed items arriving interleaved (pack 0, pack 1, pack 0): each -201 becomes frames*4+1 video tokens
    with label -100, nothing else moves, and the pixel list follows the videos' order in the batch."""
    from parsit_train.data.collator import Collator

    col = Collator(PAD, IMAGE_ID, 64, pack_length=64, video_token_id=VIDEO_ID, video_processor=_Frames())
    items = [_item("a", [151644, 872, VIDEO_TOKEN_INDEX, 3838, 151645], 2, pack=0, mark=10),
             _item("b", [151644, VIDEO_TOKEN_INDEX, 9707, 151645], 1, pack=1, mark=20),
             _item("c", [151644, 872, VIDEO_TOKEN_INDEX, 151645], 3, pack=0, mark=30)]
    out = col(items)
    ids, labels = out.input_ids, out.labels
    row0 = ids[0].tolist()
    assert row0[:11] == [151644, 872] + [VIDEO_ID] * 9 and row0[11:13] == [3838, 151645]
    assert row0[13:15] == [151644, 872] and row0[15:28] == [VIDEO_ID] * 13 and row0[28] == 151645
    assert (labels[ids == VIDEO_ID] == IGNORE_INDEX).all()
    assert labels[0, 11].item() == 3838
    assert ids[1, :7].tolist() == [151644] + [VIDEO_ID] * 5 + [9707]
    assert [int(v[0, 0, 0, 0]) for v in out.pixel_values_videos] == [10, 30, 20]  # +0.5 floored
    assert [v.shape[0] for v in out.pixel_values_videos] == [2, 3, 1]
    assert out.model_inputs()["pixel_values_videos"] is out.pixel_values_videos
    assert int((ids == VIDEO_ID).sum()) == 9 + 13 + 5


def test_collator_refuses_a_video_without_a_token_id_or_count():
    from parsit_train.data.collator import Collator

    col = Collator(PAD, IMAGE_ID, 64, video_processor=_Frames())
    with pytest.raises(ParsitError, match="video_token_id"):
        col([_item("a", [151644, VIDEO_TOKEN_INDEX, 151645], 1)])
    col = Collator(PAD, IMAGE_ID, 64, video_token_id=VIDEO_ID, video_processor=_Frames())
    bad = _item("b", [151644, VIDEO_TOKEN_INDEX, 151645], 1)
    bad["num_video_tokens"] = 0
    with pytest.raises(ParsitError, match="inconsistent"):
        col([bad])


def test_blank_video_for_a_batch_without_one():
    """A padded batch without video gets one black frame's tokens after its columns: row 0 video tokens,
    masked out, never a target; a batch with a video gets none."""
    from parsit_train.data.collator import Collator

    col = Collator(PAD, IMAGE_ID, 64, video_token_id=VIDEO_ID, video_processor=_Frames(), blank_video=True)
    out = col([_item("t", [151644, 872, 3838, 151645]), _item("u", [151644, 9707, 151645])])
    assert out.input_ids.shape == (2, 4 + PER_FRAME + 1) and out.num_padded == 2 * (4 + PER_FRAME + 1)
    assert out.input_ids[0, 4:].tolist() == [VIDEO_ID] * 5 and out.input_ids[1, 4:].tolist() == [PAD] * 5
    assert (out.attention_mask[:, 4:] == 0).all() and (out.targets[:, 4:] == IGNORE_INDEX).all()
    assert len(out.pixel_values_videos) == 1 and out.pixel_values_videos[0].shape == (1, 3, 4, 4)
    with_video = col([_item("v", [151644, VIDEO_TOKEN_INDEX, 151645], 1)])
    assert int((with_video.input_ids == VIDEO_ID).sum()) == PER_FRAME + 1
    with pytest.raises(AttributeError, match="frozen"):  # decided at construction, never set afterwards
        col.blank_video = False
    with pytest.raises(ParsitError, match="blank_video needs"):
        Collator(PAD, IMAGE_ID, 64, video_processor=_Frames(), blank_video=True)


def test_batch_moves_casts_and_pins_each_video_of_its_tuple():
    """``pixel_values_videos`` is a tuple of ragged tensors: ``Batch.to`` casts each to the run's dtype,
    ``pin_memory`` and ``model_inputs`` keep it a tuple of the same shapes."""
    from parsit_train.data.collator import Collator

    col = Collator(PAD, IMAGE_ID, 64, video_token_id=VIDEO_ID, video_processor=_Frames())
    out = col([_item("a", [151644, VIDEO_TOKEN_INDEX, 151645], 2, mark=3),
               _item("b", [151644, VIDEO_TOKEN_INDEX, 9707, 151645], 1, mark=5)])
    moved = out.to("cpu", torch.bfloat16)
    assert isinstance(moved.pixel_values_videos, tuple)
    assert [(v.dtype, v.shape[0]) for v in moved.pixel_values_videos] == [(torch.bfloat16, 2), (torch.bfloat16, 1)]
    assert moved.input_ids.dtype == torch.int64 and float(moved.pixel_values_videos[1][0, 0, 0, 0]) == 5.5
    assert [v.dtype for v in moved.model_inputs()["pixel_values_videos"]] == [torch.bfloat16] * 2
    if torch.cuda.is_available():  # pinning needs an accelerator
        assert all(v.is_pinned() for v in out.pin_memory().pixel_values_videos)


def test_blank_video_on_a_packed_batch_is_its_own_segment():
    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[-100, 2, 3]]),
             "targets": torch.tensor([[2, 3, -100]]), "position_ids": torch.tensor([[0, 1, 2]]),
             "attention_mask": None, "target_weights": None, "num_padded": 3}
    append_blank_video(batch, _Frames(), VIDEO_ID, PAD)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    assert batch["input_ids"][0, 3:].tolist() == [VIDEO_ID] * 5 and batch["num_padded"] == 8


def test_video_pixels_refuse_a_video_without_pixels():
    item = _item("a", [151644, VIDEO_TOKEN_INDEX, 151645], 1)
    del item["video"]
    with pytest.raises(ParsitError, match="no pixels"):
        video_pixels([item], _Frames())
