"""Video records in the build: the worker's clip loader, the token count, the row's video columns.

A validated record names at most one clip (:attr:`~parsit_data.records.Record.video`); its place in the
text is one ``<video>`` placeholder, which the encoder turns into the single id -201
(:data:`~parsit_data.format.VIDEO_TOKEN_INDEX`). Here the clip is decoded once, in the worker's
:class:`~parsit_data.video.VideoDecoder` child (bounded time and memory), its frames sampled and stored as
JPEG at the video processor's input size; the row counts ``spec.tokens(frames)`` visual tokens for it.

A build without a video rule (no ``--processor``, or a LLaVA / LLaVA-NeXT one: their processors take no
video) quarantines video records as ``video_unsupported``, saying so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from parsit_data.errors import ParsitError
from parsit_data.format import VIDEO_PLACEHOLDER, VIDEO_TOKEN_INDEX
from parsit_data.format.fsio import RemotePath, location
from parsit_data.format.video import VideoSpec
from parsit_data.reasons import Reason
from parsit_data.records import Record, Reject, Rejection, Turn
from parsit_data.video import LoadedVideo, VideoDecoder, VideoOptions


def video_options(config, spec: VideoSpec) -> VideoOptions:
    """The decoder's options for a build (root: --video-root, else --image-root)."""
    root = config.video_root or config.image_root
    where = location(root, "--video-root") if root else None
    if isinstance(where, RemotePath):
        raise ParsitError("--video-root on an object store is not supported: clips are decoded from local files "
                          "(copy them to a local folder, or pass a local --video-root)")
    return VideoOptions(root=Path(where) if where is not None else None, frames=spec.frames, fps=spec.fps,
                        size=spec.size, max_side=spec.max_side, jpeg_quality=spec.jpeg_quality, resample=spec.resample,
                        max_duration_s=spec.max_duration_s, timeout_s=spec.decode_timeout_s)


class VideoLoader:
    """One worker's clips: a decoder child started at the first video, closed with :meth:`close`."""

    def __init__(self, config):
        self.spec: VideoSpec | None = config.video_spec
        self._config = config
        self._decoder: VideoDecoder | None = None

    def load(self, record: Record) -> LoadedVideo | None:
        """The record's sampled clip (None when it has none); raises :class:`Reject` with a ``video_*`` reason."""
        if record.video is None:
            return None
        if self.spec is None:
            raise Reject("video_unsupported", "the record has a video, but this build has no video rule: pass "
                                              "--processor with a LlavaOnevisionProcessor folder")
        if not isinstance(record.video, str):
            raise Reject("video_unsupported", "embedded video bytes are not supported: name the clip by its path")
        if self._decoder is None:
            self._decoder = VideoDecoder(video_options(self._config, self.spec))
        return self._decoder.load(record.video)

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None


def video_share(tok, video: LoadedVideo, spec: VideoSpec):
    """(position of the video sentinel in ``input_ids``, the video's visual tokens), or a ``template_mismatch``
    :class:`Rejection` when the rendered record does not hold exactly one sentinel (a template that drops
    the user turn's words, as ``plain`` does, drops the video's place too)."""
    ids = tok.input_ids
    n = ids.count(VIDEO_TOKEN_INDEX)
    if n != 1:
        return Rejection(Reason.TEMPLATE_MISMATCH, f"the rendered record holds {n} video placeholders, not 1: this "
                                                   "template does not keep the video's place")
    return ids.index(VIDEO_TOKEN_INDEX), spec.tokens(len(video.frames))


def time_instruction(video: LoadedVideo) -> str:
    """LLaVA-Video's time instruction, worded as LLaVA-NeXT's training code writes it
    (llava/train/train.py, ``LazySupervisedDataset._get_item``, ``add_time_instruction``; the duration
    ``total_frames / avg_fps`` and the ``"{t:.2f}s"`` list are ``process_video_with_decord``'s in
    llava/utils.py; LLaVA-VL/LLaVA-NeXT at df17966), the missing space before "Please" included::

        f"The video lasts for {video_time:.2f} seconds, and {num_frames_to_sample} frames are uniformly sampled
        from it. These frames are located at {frame_time}.Please answer the following questions related to
        this video."

    The frame times are the stored ones (each frame's own presentation time), where LLaVA-NeXT's fps path
    divides the frame index by its step (not seconds).
    """
    seconds = video.total_frames / video.avg_fps if video.avg_fps > 0 else video.duration_s
    frame_time = ",".join(f"{f.time_s:.2f}s" for f in video.frames)
    return (f"The video lasts for {seconds:.2f} seconds, and {len(video.frames)} frames are uniformly sampled from it. "
            f"These frames are located at {frame_time}.Please answer the following questions related to this video.")


def with_time_instruction(record: Record, video: LoadedVideo, spec: VideoSpec | None) -> Record:
    """The record as rendered: with ``--video-time-instruction``, the turn that holds the video becomes
    ``"<video>\n{instruction}\n{its text without the placeholder}"``, as LLaVA-NeXT rewrites the first turn
    (``f'{DEFAULT_IMAGE_TOKEN}\n{time_instruciton}\n{value.replace(DEFAULT_IMAGE_TOKEN, "")}'``)."""
    if spec is None or not spec.time_instruction:
        return record
    turns = [Turn(t.role, f"{VIDEO_PLACEHOLDER}\n{time_instruction(video)}\n{t.content.replace(VIDEO_PLACEHOLDER, '')}")
             if VIDEO_PLACEHOLDER in t.content else t for t in record.turns]
    return dataclasses.replace(record, turns=turns)


def video_columns(video: LoadedVideo, num_tokens: int) -> dict:
    """The row's video columns (:data:`parsit_data.format.constants.VIDEO_FIELDS`)."""
    return {
        "video_path": video.rel_path,
        "video_frames": [f.data for f in video.frames],
        "video_frame_indices": [f.index for f in video.frames],
        "video_frame_times": [f.time_s for f in video.frames],
        "video_info": {"duration_s": video.duration_s, "fps": video.avg_fps, "width": video.width,
                       "height": video.height, "frames": video.total_frames},
        "num_video_tokens": num_tokens,
    }


@dataclasses.dataclass(frozen=True)
class _SignedFrames:
    data: bytes  # every stored frame: the exact hash covers the whole sample
    phash: bytes  # the middle frame's perceptual hash


def video_signature(video: LoadedVideo) -> _SignedFrames:
    """A video as the near-duplicate pass sees it: one image (its middle sampled frame's perceptual hash, the
    exact hash of all its frames), so two records that share their text but not their clip are not copies."""
    import io

    from PIL import Image

    from parsit_data.dedup.signatures import phash

    mid = video.frames[len(video.frames) // 2].data
    with Image.open(io.BytesIO(mid)) as img:
        return _SignedFrames(b"".join(f.data for f in video.frames), phash(img.convert("RGB")))
