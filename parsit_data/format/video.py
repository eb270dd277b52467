"""The video geometry a build was made for: how its frames are stored and how many tokens a video becomes.

Both stages read it: the build samples and stores the frames and counts the tokens into the row's length;
the trainer turns the stored JPEGs into ``pixel_values_videos`` with the pixel parameters recorded here
(the manifest's ``video`` entry), never with defaults of its own.

The rule is ``LlavaOnevisionProcessor``'s (``replace_video_token`` and ``_get_num_multimodal_tokens``):
each frame is one base crop pooled 2x2 (ceil), one ``image_newline`` per video:
``frames * ceil(isqrt(num_image_tokens) / 2) ** 2 + 1``; SigLIP-384 (729 tokens a crop): ``frames * 196 + 1``.

The pixel parameters come from the processor folder's video processor: ``video_preprocessor_config.json``
when present, else the ``video_processor`` entry of ``processor_config.json`` (transformers 5 nests it),
else ``LlavaOnevisionVideoProcessor``'s class defaults (size 384x384, bicubic, OPENAI_CLIP mean/std, which
differ from the image processor's). The JSON is read; the video processor is never instantiated (it needs
torchvision).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from parsit_data.errors import ParsitError
from parsit_data.format.vision import _read_json

#: ``LlavaOnevisionVideoProcessor``'s class defaults (transformers 5.x).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_SIZE = (384, 384)  # (height, width)
#: PIL's resampling filters by their number (what a processor config stores).
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
VIDEO_CONFIG_NAME = "video_preprocessor_config.json"


@dataclass(frozen=True)
class VideoSpec:
    """How a build samples and stores a video's frames and counts its tokens (the manifest's ``video``)."""

    frames: int = 32  # --video-frames: uniform frames, or the cap with --video-fps
    fps: float | None = None  # --video-fps
    max_side: int | None = None  # --video-max-side: frames stored at this longer side, aspect kept
    size: tuple[int, int] = DEFAULT_SIZE  # (height, width): the video processor's input; frames stored squashed to it
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    resample: str = "bicubic"
    jpeg_quality: int = 95
    tokens_per_frame: int = 196  # pooled tokens of one frame
    video_token: str = "<video>"
    time_instruction: bool = False  # --video-time-instruction (LLaVA-Video's frame times in the prompt)
    decode_timeout_s: float = 120.0
    max_duration_s: float = 3600.0
    #: the folder's video processor config verbatim, and where it came from ("class defaults" when none)
    video_processor: dict | None = None
    video_processor_source: str = "class defaults"

    def tokens(self, num_frames: int) -> int:
        """Visual tokens of a video of ``num_frames`` sampled frames (one newline per video)."""
        return num_frames * self.tokens_per_frame + 1

    @property
    def stored_size(self) -> tuple[int, int] | None:
        """(height, width) every stored frame has, or None with --video-max-side (aspect kept)."""
        return None if self.max_side is not None else self.size

    def to_json(self) -> dict:
        d = asdict(self)
        d["size"] = {"height": self.size[0], "width": self.size[1]}
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        return d

    @classmethod
    def from_json(cls, data: dict) -> "VideoSpec":
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        size = data.get("size")
        if isinstance(size, dict):
            data["size"] = (int(size["height"]), int(size["width"]))
        for k in ("image_mean", "image_std"):
            if k in data:
                data[k] = tuple(data[k])
        return cls(**data)

    @classmethod
    def from_processor_dir(cls, folder: str | Path, num_image_tokens: int, **options: Any) -> "VideoSpec":
        """The spec of a LlavaOnevisionProcessor folder, with the build's sampling ``options``."""
        folder = Path(folder)
        cfg, source = _video_config(folder)
        kw: dict[str, Any] = dict(options)
        kw["tokens_per_frame"] = math.ceil(math.isqrt(num_image_tokens) / 2) ** 2
        kw["video_token"] = _video_token(folder)
        kw["video_processor"], kw["video_processor_source"] = cfg, source
        if cfg is not None:
            where = f"{folder / source}" if source != "processor_config.json" else f"{folder / source}: video_processor"
            if cfg.get("size") is not None:
                kw["size"] = _size(cfg["size"], where)
            for name in ("image_mean", "image_std"):
                v = cfg.get(name)
                if v is not None:
                    vals = tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))
                    kw[name] = vals
            if cfg.get("rescale_factor") is not None:
                kw["rescale_factor"] = float(cfg["rescale_factor"])
            r = cfg.get("resample")
            if r is not None:
                if r not in RESAMPLE_NAMES:
                    raise ParsitError(f"{where}: field resample is {r!r}, not a PIL filter number (0-5)")
                kw["resample"] = RESAMPLE_NAMES[r]
        return cls(**kw)


def _video_config(folder: Path) -> tuple[dict | None, str]:
    path = folder / VIDEO_CONFIG_NAME
    if path.is_file():
        return _read(path), VIDEO_CONFIG_NAME
    proc = folder / "processor_config.json"
    if proc.is_file():
        nested = _read(proc).get("video_processor")
        if isinstance(nested, dict):
            return nested, "processor_config.json"
    return None, "class defaults"


def _read(path: Path) -> dict:
    """A processor file's JSON object (the caller checked that it exists); clear errors otherwise."""
    return _read_json(path) or {}


def _size(size: Any, where: str) -> tuple[int, int]:
    if isinstance(size, dict) and size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    raise ParsitError(f"{where}: field size is {size!r}; Parsit stores frames at a fixed {{height, width}} "
                      "(what LlavaOnevisionVideoProcessor uses)")


def _video_token(folder: Path) -> str:
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        data = _read(path)
        tok = data.get("video_token")
        extra = data.get("extra_special_tokens") or data.get("model_specific_special_tokens") or {}
        if not isinstance(tok, str) and isinstance(extra, dict):
            tok = extra.get("video_token")
        if isinstance(tok, str) and tok:
            return tok
    return "<video>"
