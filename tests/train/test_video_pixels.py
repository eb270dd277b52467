"""Stored video frames to pixels in the project venv (no torchvision): the manifest's video parameters are
used (not the image processor's), frames at size are not resampled, a bad frame or an inconsistent row is a
clear error; the dataset's hook reads a row's video columns (and a shard without them as no video).
Parity with transformers' video processor itself: tests/train/test_video_export.py (torchvision venv)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from parsit_data.errors import ParsitError
from parsit_train.data.video_batch import VIDEO_TOKEN_INDEX, video_item
from parsit_train.data.video_pixels import VideoPixels

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
ENTRY = {"size": {"height": 32, "width": 48}, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
         "rescale_factor": 1 / 255, "resample": "bicubic", "tokens_per_frame": 4}


def _jpeg(w, h, seed=0):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_frames_at_size_are_normalised_with_the_video_entrys_mean_and_std():
    frames = [_jpeg(48, 32, s) for s in range(3)]
    out = VideoPixels(ENTRY).process(frames, "s")
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in frames]).astype(np.float64)
    want = (decoded / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert out.shape == (3, 3, 32, 48)
    np.testing.assert_allclose(out.numpy(), want.transpose(0, 3, 1, 2), atol=2e-5)


def test_off_size_frames_are_resized_to_the_processor_size():
    out = VideoPixels(ENTRY).decode([_jpeg(97, 61)], "s")
    assert out.shape == (1, 3, 32, 48) and out.dtype.is_floating_point is False


def test_missing_parameters_and_bad_frames_are_refused():
    with pytest.raises(ParsitError, match="image_std"):
        VideoPixels({k: v for k, v in ENTRY.items() if k != "image_std"})
    with pytest.raises(ParsitError, match="resample"):
        VideoPixels({**ENTRY, "resample": "lanczos"})
    with pytest.raises(ParsitError, match="frame 1 of the video of sample 'x'"):
        VideoPixels(ENTRY).decode([_jpeg(48, 32), b"\xff\xd8 not a jpeg"], "x")


def _batch(ids, frames, n_tokens, video_columns=True):
    cols = {"input_ids": pa.array([ids], pa.list_(pa.int32()))}
    if video_columns:
        cols["video_frames"] = pa.array([frames], pa.list_(pa.binary()))
        cols["num_video_tokens"] = pa.array([n_tokens], pa.int32())
    return pa.RecordBatch.from_pydict(cols)


def test_dataset_hook_reads_a_rows_video():
    ids = np.array([1, VIDEO_TOKEN_INDEX, 2])
    frames = [_jpeg(48, 32, s) for s in range(2)]
    item = video_item(_batch(ids.tolist(), frames, 2 * 4 + 1), 0, ids, VideoPixels(ENTRY), "s")
    assert item["num_video_tokens"] == 9 and item["video"].shape == (2, 3, 32, 48)
    assert video_item(_batch([1, 2], [], 0, video_columns=False), 0, np.array([1, 2]), None, "t") == {
        "num_video_tokens": 0}
    with pytest.raises(ParsitError, match="2 stored frames make 9"):
        video_item(_batch(ids.tolist(), frames, 8), 0, ids, VideoPixels(ENTRY), "s")
    with pytest.raises(ParsitError, match="inconsistent"):
        video_item(_batch([1, 2], frames, 9), 0, np.array([1, 2]), VideoPixels(ENTRY), "s")
