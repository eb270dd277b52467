"""A row's stored video frames (JPEG) to ``pixel_values_videos``, as ``LlavaOnevisionVideoProcessor`` makes them.

The build samples a clip once and stores each sampled frame as a JPEG (``video_frames``), by default already
at the video processor's input size. The trainer's pixels for a frame are then exactly what the OneVision
video processor makes from that decoded frame (transformers 5.x, ``BaseVideoProcessor._preprocess``,
torchvision backend on CPU):

1. decode the JPEG (Pillow), convert to RGB, ``[frames, 3, H, W]`` uint8;
2. resize to ``size`` {height, width} only when the frame is not already at that size (torchvision's
   ``resize_image`` returns the tensor untouched then). Otherwise the same call torchvision makes for a
   uint8 CPU tensor: ``torch.nn.functional.interpolate(..., mode, align_corners=False, antialias=True)``
   on the uint8 tensor itself (bicubic: always native uint8; bilinear: native on AVX2/AVX512, else via
   float32, rounded); a build with ``--video-max-side`` takes this branch;
3. rescale and normalise fused, as the processor does: ``(x - mean / rescale) / (std / rescale)`` in
   float32, with the VIDEO processor's mean and std (the manifest's ``video`` entry: OpenAI CLIP's by
   class default, not the image processor's SigLIP 0.5).

Every parameter comes from the manifest's ``video`` entry (``size``, ``image_mean``, ``image_std``,
``rescale_factor``, ``resample``): this module has no defaults of its own. The export's parity test
(tests/train/test_video_export.py, run in the torchvision venv by scripts/video_parity.sh) checks the result
against the export's own ``AutoProcessor`` on the same frames.

Decoding keeps Pillow's decompression-bomb limit and never loads truncated JPEGs; a bad frame is a
ParsitError naming the sample and the frame (the build wrote it, so the shard is damaged: rebuild it).
"""

from __future__ import annotations

import io
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from parsit_data.errors import ParsitError

#: PIL resampling filters (by number or name, as processor configs and the manifest store them) to the
#: ``torch.nn.functional.interpolate`` mode torchvision uses for them (``pil_torch_interpolation_mapping``).
_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic", "nearest": "nearest", "bilinear": "bilinear",
          "bicubic": "bicubic"}
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


@dataclass(frozen=True)
class VideoPixelSpec:
    """The video processor's pixel parameters, from the manifest's ``video`` entry."""

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float
    mode: str  # torch interpolate mode

    @classmethod
    def from_manifest(cls, video: dict) -> VideoPixelSpec:
        if not video:
            raise ParsitError("the build has no video entry in its manifest: it took no video records")
        missing = [k for k in ("size", "image_mean", "image_std", "rescale_factor", "resample") if video.get(k) is None]
        if missing:
            raise ParsitError(f"the manifest's video entry lacks {', '.join(missing)}: rebuild with this release of "
                              "parsit-data (the trainer takes video pixel parameters only from the build)")
        size = video["size"]
        if not isinstance(size, dict) or "height" not in size or "width" not in size:
            raise ParsitError(f"the manifest's video size {size!r} is not {{height, width}}: only a fixed input size "
                              "(OneVision's video processor) is supported")
        resample = video["resample"]
        mode = _MODES.get(resample.lower() if isinstance(resample, str) else int(resample))
        if mode is None:
            raise ParsitError(f"video resample {resample!r} is not one the trainer reproduces (nearest, bilinear, "
                              "bicubic)")
        return cls(int(size["height"]), int(size["width"]), tuple(float(x) for x in video["image_mean"]),
                   tuple(float(x) for x in video["image_std"]), float(video["rescale_factor"]), mode)


def _native_uint8(mode: str) -> bool:
    """Whether torchvision resizes a uint8 CPU tensor in uint8 (else via float32, rounded)."""
    if mode == "bilinear":
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64",
                                                                                                       "arm64")
    return True


def resize_frames(frames: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """uint8 ``[n, 3, h, w]`` to ``[n, 3, height, width]`` as torchvision's ``resize_image`` does on CPU."""
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    aa = mode != "nearest"
    kw = {"align_corners": False, "antialias": True} if aa else {}
    if _native_uint8(mode) or mode == "nearest":
        return torch.nn.functional.interpolate(frames.contiguous(), size=[height, width], mode=mode, **kw)
    out = torch.nn.functional.interpolate(frames.float(), size=[height, width], mode=mode, **kw)
    if mode == "bicubic":
        out = out.clamp_(0, 255)
    return out.round_().to(torch.uint8)


class VideoPixels:
    """A row's encoded frames -> uint8 frames at the processor's size -> normalised float32 pixels."""

    def __init__(self, video: dict, max_pixels: int = DEFAULT_MAX_PIXELS, tokens_per_frame: int | None = None,
                 video_token_id: int | None = None) -> None:
        self.spec = VideoPixelSpec.from_manifest(video)
        built = None if video.get("tokens_per_frame") is None else int(video["tokens_per_frame"])
        if built is not None and tokens_per_frame is not None and built != int(tokens_per_frame):
            raise ParsitError(f"the build counted {built} tokens per video frame, the model pools each frame to "
                              f"{tokens_per_frame}: rebuild with this model's processor")
        #: pooled tokens of one frame (a video is frames * this + 1): the build's count, else the geometry's
        self.tokens_per_frame = built if built is not None else (
            None if tokens_per_frame is None else int(tokens_per_frame))
        #: the build's video token (the export's processor expands it) and its id in the run's tokenizer
        self.video_token: str | None = video.get("video_token")
        self.video_token_id: int | None = None if video_token_id is None else int(video_token_id)
        self.max_pixels = int(max_pixels)
        s = self.spec
        # The processor's fused rescale + normalise (``_fuse_mean_std_and_rescale_factor``), in float32.
        self._mean = (torch.tensor(s.mean) * (1.0 / s.rescale_factor)).view(1, 3, 1, 1)
        self._std = (torch.tensor(s.std) * (1.0 / s.rescale_factor)).view(1, 3, 1, 1)

    def decode_frame(self, data: bytes, sample_id: str, j: int) -> np.ndarray:
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > self.max_pixels:
                raise ParsitError(f"frame {j} of the video of sample {sample_id!r} has {img.width}x{img.height} "
                                  f"pixels, over the limit of {self.max_pixels}: rebuild with --video-max-side")
            img.load()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise ParsitError(f"cannot decode frame {j} of the video of sample {sample_id!r}: {exc}; rebuild the "
                              "shard") from exc
        return np.array(img.convert("RGB") if img.mode != "RGB" else img)  # writable: torch.from_numpy

    def decode(self, frames: Sequence[bytes], sample_id: str = "?") -> torch.Tensor:
        """uint8 ``[frames, 3, H, W]`` at the processor's size (resized only when a frame is not at it)."""
        if not frames:
            raise ParsitError(f"sample {sample_id!r} has a video placeholder but no stored frames: rebuild the shard")
        s = self.spec
        out = []
        for j, data in enumerate(frames):
            rgb = torch.from_numpy(self.decode_frame(data, sample_id, j)).permute(2, 0, 1)
            out.append(resize_frames(rgb[None], s.height, s.width, s.mode)[0])
        return torch.stack(out)

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[n, 3, H, W]`` -> float32, ``(x - mean/rescale) / (std/rescale)``."""
        return frames.to(torch.float32).sub_(self._mean).div_(self._std)

    def process(self, frames: Sequence[bytes], sample_id: str = "?") -> torch.Tensor:
        """A row's frames as ``pixel_values_videos`` of one video: float32 ``[frames, 3, H, W]``."""
        return self.normalise(self.decode(frames, sample_id))

    def blank(self) -> torch.Tensor:
        """One black frame (uint8 ``[1, 3, H, W]``): the blank video of a micro-batch without video."""
        return torch.zeros((1, 3, self.spec.height, self.spec.width), dtype=torch.uint8)


def video_entry(manifest) -> dict | None:
    """A manifest's ``video`` entry as a dict (None: the build took no video, or predates format version 3)."""
    entry = getattr(manifest, "video", None)
    if entry is None:
        return None
    return entry.model_dump(mode="json") if hasattr(entry, "model_dump") else dict(entry)


def video_entries(builds) -> list[tuple]:
    """``(root, video entry)`` of the builds that took video (their manifests as already opened)."""
    return [(b.root, e) for b in builds if (e := video_entry(b.manifest)) is not None]


def pooled_tokens_per_frame(image_size: int, patch_size: int) -> int:
    """OneVision's pooled tokens of one frame: the base crop's patch grid pooled 2x2 (ceil)."""
    return math.ceil((int(image_size) // int(patch_size)) / 2) ** 2


def video_pixels_of(view) -> VideoPixels | None:
    """The run's :class:`VideoPixels` from a :class:`~parsit_train.data.view.BuildView` (None when no build
    took video). Builds whose frames were made for different pixel parameters or token counts are refused:
    one model, one video processor. Tokens per frame: the build's count, checked against the view's
    geometry (the model's vision tower, checked against the build before this); the video token id: the
    build's video token in the run's tokenizer."""
    entries = video_entries(view.builds)
    if not entries:
        return None
    keys = {(VideoPixelSpec.from_manifest(e), e.get("tokens_per_frame")) for _, e in entries}
    if len(keys) > 1:
        raise ParsitError("the builds' videos were made for different video processors ("
                          + "; ".join(f"{root}: {VideoPixelSpec.from_manifest(e)}" for root, e in entries)
                          + "): rebuild them with one --processor")
    entry = entries[0][1]
    g = view.geometry
    if g is None or g.family != "llava_onevision":
        raise ParsitError(f"the builds hold videos but their vision family is {None if g is None else g.family!r}: "
                          "only LLaVA-OneVision trains on video (build with a OneVision --processor)")
    token = entry.get("video_token")
    token_id = view.placeholder_ids.get("video")
    if token_id is None and token:
        token_id = view.token_id(token)
    return VideoPixels(entry, tokens_per_frame=pooled_tokens_per_frame(g.image_size, g.patch_size),
                       video_token_id=token_id)
