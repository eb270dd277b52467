"""Video rows into batches: the -201 sentinel expanded, one ``pixel_values_videos`` tensor per video.

A row stores its video (at most one, format version 3) as ONE sentinel id ``VIDEO_TOKEN_INDEX`` (-201) in
``input_ids`` (label -100), its sampled frames as JPEGs (``video_frames``) and ``num_video_tokens``: what
OneVision makes of it, ``frames * tokens_per_frame + 1`` (each frame's base crop pooled 2x2, one
``image_newline`` per video). The dataset and the collator call the functions here (small hooks, so the
typed data path can take them over):

- :func:`video_item` (dataset ``__getitem__``): the row's video fields; with a
  :class:`~parsit_train.data.video_pixels.VideoPixels`, its frames decoded to uint8 ``[frames, 3, H, W]``
  at the processor's size (decoding in the loader's workers, as for images);
- :func:`expand_video` (collator, per sequence, before the length check): the sentinel becomes
  ``num_video_tokens`` copies of the model's ``video_token_id``, labels -100, exactly as -200 becomes the
  image token;
- :func:`video_pixels` (collator, per batch): the batch's videos as a tuple of float32
  ``[frames_i, 3, H, W]``, one per video in the order of their tokens in the batch (row-major: the order in
  which the model's ``masked_scatter`` fills the video token positions). Videos of different frame counts
  (a short clip keeps all its frames) cannot share one ``[n, frames, ...]`` tensor; the model takes the list
  (:func:`parsit_train.video_model.enable_ragged_videos`);
- :func:`append_blank_video` (collator, per batch): a micro-batch without a video gets one black one-frame
  video after everything else (its own segment, never supervised), so that every rank runs the same vision
  modules each micro-step when the run has video (ZeRO-3 gathers per module call; see the blank image).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from parsit_data.errors import ParsitError
from parsit_data.format import IGNORE_INDEX

try:  # format version 3 (the video build); the sentinel is fixed by the contract either way
    from parsit_data.format import VIDEO_TOKEN_INDEX
except ImportError:  # pragma: no cover - before the build side's format package is merged
    VIDEO_TOKEN_INDEX = -201


def video_item(batch, r: int, input_ids: np.ndarray, video_pixels, sample_id: str) -> dict:
    """The video fields of row ``r`` of a record batch (``{"num_video_tokens": 0}`` without video, and for a
    version 1/2 shard, which has no video columns)."""
    names = batch.schema.names
    n = int(batch.column("num_video_tokens")[r].as_py()) if "num_video_tokens" in names else 0
    sentinels = int(np.count_nonzero(input_ids == VIDEO_TOKEN_INDEX))
    if sentinels != (1 if n else 0):
        raise ParsitError(f"sample {sample_id!r} has {sentinels} video placeholder(s) (-201) and {n} video tokens: "
                          "the shard is inconsistent, rebuild it")
    if not n:
        return {"num_video_tokens": 0}
    frames = batch.column("video_frames")[r].values.to_pylist()
    item = {"num_video_tokens": n, "video_frame_count": len(frames)}
    if video_pixels is None:
        item["video_frames"] = frames
    else:
        tpf = video_pixels.tokens_per_frame
        if tpf is not None and len(frames) * tpf + 1 != n:
            raise ParsitError(f"sample {sample_id!r}: {len(frames)} stored frames make {len(frames) * tpf + 1} video "
                              f"tokens ({tpf} per frame + 1), the row says {n}: rebuild the shard")
        item["video"] = video_pixels.decode(frames, sample_id)
    return item


def expand_video(ids: np.ndarray, labels: np.ndarray, item: dict, video_token_id: int | None):
    """Replace the row's -201 by ``num_video_tokens`` copies of ``video_token_id`` (labels -100)."""
    n = int(item.get("num_video_tokens") or 0)
    where = np.flatnonzero(ids == VIDEO_TOKEN_INDEX)
    if where.size != (1 if n else 0):
        raise ParsitError(f"sample {item['sample_id']!r} has {where.size} video placeholder(s) and {n} video tokens: "
                          "the shard is inconsistent, rebuild it")
    if not n:
        return ids, labels
    if video_token_id is None or video_token_id < 0:
        raise ParsitError(f"sample {item['sample_id']!r} has a video but the collator has no video_token_id: the "
                          "model's video token id (derived from the build's processor: BatchSpec.video_token_id)")
    at = int(where[0])
    vid = np.full(n, video_token_id, dtype=np.int64)
    ign = np.full(n, IGNORE_INDEX, dtype=np.int64)
    return (np.concatenate([ids[:at], vid, ids[at + 1:]]).astype(np.int64),
            np.concatenate([labels[:at], ign, labels[at + 1:]]).astype(np.int64))


def token_order(items: Sequence[dict]) -> list[int]:
    """Item indices in the order their tokens appear in the batch (packs in order of first appearance, items
    in order within a pack; unpacked: one item per row), as the collator lays them out."""
    return [k for r in batch_rows(items) for k in r]


def batch_rows(items: Sequence[dict]) -> list[list[int]]:
    """Which items each batch row holds: packed items by their pack slot (rows in order of first
    appearance), an unpacked item a row of its own. The collator lays rows out by this."""
    rows: list[list[int]] = []
    slots: dict[int, int] = {}
    for k, item in enumerate(items):
        if "pack" in item:
            row = slots.setdefault(int(item["pack"]), len(slots))
            if row == len(rows):
                rows.append([])
            rows[row].append(k)
        else:
            rows.append([k])
    return rows


def video_pixels(items: Sequence[dict], processor) -> tuple[torch.Tensor, ...] | None:
    """The batch's videos as float32 ``[frames_i, 3, H, W]``, in token order (a tuple); None without video."""
    videos = [items[k] for k in token_order(items) if items[k].get("num_video_tokens")]
    if not videos:
        return None
    if processor is None or any(v.get("video") is None for v in videos):
        raise ParsitError(f"sample {videos[0]['sample_id']!r} has a video but no pixels: give the dataset and the "
                          "collator the run's VideoPixels (the build's manifest has a video entry)")
    return tuple(processor.normalise(v["video"]) for v in videos)


_COLUMNS = ("input_ids", "labels", "targets", "target_weights", "attention_mask", "position_ids")


def append_blank_video(out: dict, processor, video_token_id: int, pad_token_id: int) -> dict:
    """One black one-frame video after the last column of a batch that has none (row 0 holds its tokens,
    other rows padding): labels/targets -100, weight 0, attention 0 (padded batch), positions a segment of
    their own (packed batch). ``out`` is the collator's field dict (before it becomes a
    :class:`~parsit_train.data.batch.Batch`); it is changed and returned."""
    tokens = processor.tokens_per_frame + 1
    ids = out["input_ids"]
    bsz = ids.shape[0]
    fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "targets": IGNORE_INDEX, "target_weights": 0.0,
            "attention_mask": 0}
    for key in _COLUMNS:
        t = out.get(key)
        if t is None:
            continue
        if key == "position_ids":
            extra = torch.arange(tokens, dtype=t.dtype).expand(bsz, tokens)
        else:
            extra = torch.full((bsz, tokens), fill[key], dtype=t.dtype)
        if key == "input_ids":
            extra[0] = video_token_id
        out[key] = torch.cat([t, extra], dim=1)
    out["pixel_values_videos"] = (processor.normalise(processor.blank()),)
    out["num_padded"] = int(out["input_ids"].numel())
    return out


def video_tokens(dataset) -> np.ndarray:
    """Video tokens of every row (int64) of a :class:`~parsit_train.data.dataset.ShardDataset`, for balancing
    the vision work across ranks beside the image tokens (zeros for builds without video; a build read
    through the shard cache has no such index column and counts images only)."""
    n = len(dataset)
    if dataset.cache is not None:
        return np.zeros(n, dtype=np.int64)
    try:
        col = dataset._column("num_video_tokens", lambda c: c.to_numpy(zero_copy_only=False))
    except KeyError:
        return np.zeros(n, dtype=np.int64)
    return np.asarray(col, dtype=np.int64) if len(col) == n else np.zeros(n, dtype=np.int64)


def run_video_pixels(dataset):
    """The run's :class:`~parsit_train.data.video_pixels.VideoPixels`, from the dataset's build view (its
    manifests, read once; no file is read again), or None when no row has a video (a build made with a
    video-capable processor records a ``video`` entry even when it took no clip; such a run needs no video
    pixels and no blank video). A build read through the shard cache cannot be scanned cheaply: its video
    entry is trusted."""
    from parsit_train.data.video_pixels import video_pixels_of

    if dataset.cache is None and not video_tokens(dataset).any():
        return None
    return video_pixels_of(dataset.view)
