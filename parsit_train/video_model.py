"""OneVision trains on videos of different frame counts, packed with images and text.

transformers' ``LlavaOnevisionModel.get_video_features`` takes ``pixel_values_videos`` as ONE tensor
``[videos, frames, 3, H, W]``: every video of a call must have the same number of frames. A build keeps
every frame of a short clip (a 5-frame clip beside 32-frame ones), so a micro-batch's videos are ragged.
:func:`enable_ragged_videos` lets the model take them as a list of ``[frames_i, 3, H, W]`` (what the collator
gives, in token order) and computes their features in ONE call of transformers' own ``get_video_features``
on all frames as a single ``[1, sum frames, ...]`` video. That is exact, not an approximation: the vision
tower, the projector and the 2x2 pooling work frame by frame, and the only per-video part is the one
``image_newline`` appended after a video's frames, which is the same vector for every video. The function
splits the frame features per video and appends the newline after each; the model's own ``forward`` then
scatters them into the video token positions (``masked_scatter``, row-major), so video ``i``'s
``frames_i * tokens_per_frame + 1`` features land on the ``i``-th run of video tokens. One tower call per
micro-batch also keeps ZeRO-3's per-module gathers paired across ranks (with the collator's blank video).

A plain tensor still goes to transformers' method untouched (inference, generation, the export).

:class:`parsit_train.data.batch.Batch` carries the list as its ``pixel_values_videos`` field (a tuple), which
the trainer's forward passes with the other model inputs. The collator's video token id and blank video are
decided from the build view before the collator is made (:func:`parsit_train.data.loader.build_dataloader`);
:func:`check_video_model` only checks them against the model once it exists.
"""

from __future__ import annotations

import types

import torch

from parsit_data.errors import ParsitError


def _ragged_video_features(self, pixel_values_videos, *args, **kwargs):
    method = type(self).get_video_features
    if torch.is_tensor(pixel_values_videos):
        return method(self, pixel_values_videos, *args, **kwargs)
    videos = list(pixel_values_videos)
    counts = [int(v.shape[0]) for v in videos]
    out = method(self, torch.cat(videos)[None], *args, **kwargs)
    pooled = out.pooler_output[0]  # [sum(frames) * per_frame + 1, hidden]: all frames, one newline
    body, newline = pooled[:-1], pooled[-1:]
    per_frame = body.shape[0] // sum(counts)
    parts, at = [], 0
    for n in counts:
        parts += [body[at: at + n * per_frame], newline]
        at += n * per_frame
    out.pooler_output = torch.cat(parts)[None]
    return out


def enable_ragged_videos(model) -> None:
    """Let a OneVision model's ``get_video_features`` take a list of ``[frames_i, 3, H, W]`` (idempotent; a
    no-op for the other families)."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(type(inner), "get_video_features"):
        return
    inner.get_video_features = types.MethodType(_ragged_video_features, inner)


def tokens_per_frame(config) -> int:
    """OneVision's pooled tokens of one frame: the base crop's patch grid pooled 2x2 (ceil)."""
    from parsit_train.data.video_pixels import pooled_tokens_per_frame

    vc = config.vision_config
    return pooled_tokens_per_frame(vc.image_size, vc.patch_size)


def check_video_model(collator, config) -> None:
    """After the model exists, a check that changes nothing: the collator (made before the model, from the
    build view) expands -201 to the model's ``video_token_id`` and counts the model's tokens per frame. The
    model section derived from the build already agrees (:func:`parsit_train.families.model_section`); this
    refuses a model built otherwise (an ``init_from`` folder, a hand-made config)."""
    processor = getattr(collator, "video_processor", None)
    if processor is None:
        return
    video_id = getattr(config, "video_token_id", None)
    if video_id is None or not hasattr(config, "vision_aspect_ratio"):
        raise ParsitError(f"the builds hold videos but the model ({type(config).__name__}) takes none: train a "
                          "LLaVA-OneVision model (build with a OneVision --processor)")
    built = processor.video_token_id if processor.video_token_id is not None else collator.video_token_id
    if built is not None and int(built) != int(video_id):
        raise ParsitError(f"the model's video_token_id is {video_id}, but the build's video token "
                          f"{processor.video_token!r} is id {built} in this tokenizer (the export's processor expands "
                          f"that token): set model.video_token_id: {built}")
    if collator.video_token_id is not None and int(collator.video_token_id) != int(video_id):
        raise ParsitError(f"the collator expands videos to id {collator.video_token_id}, the model's video_token_id "
                          f"is {video_id}: set model.video_token_id: {collator.video_token_id}")
    want = tokens_per_frame(config)
    if processor.tokens_per_frame is not None and processor.tokens_per_frame != want:
        raise ParsitError(f"the build counted {processor.tokens_per_frame} tokens per video frame, the model pools "
                          f"each frame to {want}: rebuild with this model's processor")
