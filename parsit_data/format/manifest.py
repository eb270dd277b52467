"""``manifest.json`` as a pydantic model: the contract a build hands to the trainer.

:func:`parsit_data.build.build` constructs a :class:`Manifest` (so a build can never publish a manifest
that breaks its own contract, the accounting invariant above all) and writes it with
:meth:`Manifest.to_bytes`; every reader gets one from :func:`load_manifest` (through
:func:`parsit_data.format.open_build`). The JSON Schema is ``schemas/manifest.schema.json``;
docs/FORMAT.md describes the same thing in prose.

Models allow extra keys: a newer Parsit may add fields, and a reader of this version must still
accept its manifests (the format version says when something incompatible changed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from parsit_data.format.constants import MANIFEST_NAME, READABLE_VERSIONS
from parsit_data.errors import ParsitError

_OPEN = ConfigDict(extra="allow")


class TokenizerEntry(BaseModel):
    """The tokenizer the shards were built with; the trainer refuses a different one."""

    model_config = _OPEN
    path: str
    sha256: str = Field(description="parsit_data.format.fingerprint of the tokenizer folder")
    vocab_size: int = Field(gt=0)
    pad_token: str = Field(min_length=1)
    pad_token_id: int = Field(ge=0)
    eos_token: str | None
    eos_token_id: int | None


class VisionEntry(BaseModel):
    """The vision geometry (:class:`parsit_data.format.VisionGeometry`, see :meth:`geometry`).

    A manifest written before the model families has no ``family``: it reads as ``llava`` with no EXIF
    policy (those builds stored image bytes as found).
    """

    model_config = _OPEN
    image_size: int = Field(gt=0, description="one crop's side in pixels (the vision tower's image_size)")
    patch_size: int = Field(gt=0)
    aspect: str
    tokens_per_image: int = Field(gt=0, description="patch features of one crop: (image_size // patch_size) ** 2 "
                                                    "(llava_onevision: the processor's num_image_tokens)")
    grid_pinpoints: list[tuple[int, int]] = Field(description="anyres grid resolutions, (height, width) each")
    family: Literal["llava", "llava_next", "llava_onevision"] = Field(
        "llava", description="the model family whose rule counted the visual tokens")
    vision_feature_select_strategy: Literal["default", "full"] = "full"
    vision_aspect_ratio: str | None = Field(None, description="llava_onevision: anyres_max_N")
    num_additional_image_tokens: int = Field(0, ge=0)
    num_image_tokens: int | None = Field(None, description="llava_onevision processor's num_image_tokens")
    image_token: str = Field("<image>", description="the processor's image placeholder token")
    exif: Literal["transpose", "none"] = Field(
        "none", description="transpose: images were EXIF-transposed (as transformers' load_image) before counting "
                            "and storing; none: bytes stored as found (builds before the families)")
    image_processor: dict[str, Any] | None = Field(
        None, description="the processor folder's image processor config verbatim (with image_processor_type)")
    processor: dict[str, Any] | None = Field(
        None, description="the processor folder's processor_config.json verbatim (without a nested image_processor)")

    def geometry(self):
        """The :class:`~parsit_data.format.vision.VisionGeometry` this entry describes."""
        from parsit_data.format.vision import VisionGeometry

        return VisionGeometry.from_json(self.model_dump(mode="json", exclude_unset=False)
                                        if "family" in self.model_fields_set else
                                        {k: v for k, v in self.model_dump(mode="json").items()
                                         if k in self.model_fields_set})


class VideoEntry(BaseModel):
    """How the build sampled and stored video frames and counted their tokens
    (:class:`parsit_data.format.video.VideoSpec`, see :meth:`spec`); the trainer's pixel parameters."""

    model_config = _OPEN
    frames: int = Field(gt=0, description="--video-frames: uniform frames over the clip, or the cap with fps")
    fps: float | None = Field(None, description="--video-fps: frames sampled per second (null: uniform)")
    max_side: int | None = Field(None, description="--video-max-side: frames stored at this longer side, aspect kept "
                                                   "(null: squashed to size)")
    size: dict[str, int] = Field(description="the video processor's input {height, width}")
    image_mean: list[float]
    image_std: list[float]
    rescale_factor: float
    resample: str = Field(description="PIL filter of the resize to size")
    tokens_per_frame: int = Field(gt=0, description="pooled tokens of one frame; a video is frames * this + 1")
    video_token: str
    time_instruction: bool
    decode_timeout_s: float
    video_processor: dict | None = Field(None, description="the processor folder's video processor config verbatim "
                                                           "(null: the class defaults)")
    video_processor_source: str

    def spec(self):
        """The :class:`~parsit_data.format.video.VideoSpec` this entry describes."""
        from parsit_data.format.video import VideoSpec

        return VideoSpec.from_json(self.model_dump())


class SourceCounts(BaseModel):
    """What became of one source's records: the counters the manifest and the report show.

    :meth:`accounting_error` is the accounting invariant (every record read is a row or a quarantine
    line), checked here and nowhere else: by the manifest model when a build writes or a reader opens
    one, and by the report's "accounting" check.
    """

    model_config = _OPEN
    read: int = Field(ge=0, description="records read (after sampling), including ones that were not JSON")
    kept: int = Field(ge=0, description="rows written to the shards")
    quarantined: dict[str, int] = Field(description="lines of quarantine.jsonl by reason code")
    truncated: int = Field(ge=0, description="kept rows cut at a turn boundary to fit --max-length")
    placeholder_inserted: int = Field(0, ge=0, description="kept rows whose missing <image> was inserted")
    tokens: int = Field(ge=0, description="multimodal tokens of the kept rows")
    text_tokens: int = Field(0, ge=0)
    supervised_tokens: int = Field(0, ge=0)
    images: int = Field(0, ge=0)

    def accounting_error(self) -> str | None:
        """Why the counters do not add up (read = kept + quarantined, no negative count), or None."""
        q = sum(self.quarantined.values())
        if self.read != self.kept + q:
            return f"read {self.read} != kept {self.kept} + quarantined {q}"
        if any(v < 0 for v in self.quarantined.values()):
            return "negative quarantine count"
        return None


class _SourceSpec(BaseModel):
    model_config = _OPEN
    name: str
    path: str
    format: str = Field(description="the container it was read as: jsonl, json, parquet, arrow (datasets "
                                    "Arrow files, save_to_disk folders) or webdataset (tar shards)")
    sampling: str = Field(description="LLaVA-NeXT sampling strategy: all, first:N[%], end:N[%], random:N[%]")
    seed: int
    sha256: str


class SourceEntry(SourceCounts, _SourceSpec):
    """One input source: where it came from, how it was sampled, and what became of its records."""

    @model_validator(mode="after")
    def _accounting(self) -> "SourceEntry":
        err = self.accounting_error()
        if err:
            raise ValueError(f"source {self.name!r}: {err}")
        return self


class Totals(BaseModel):
    model_config = _OPEN
    read: int = Field(ge=0)
    kept: int = Field(ge=0)
    quarantined: int = Field(ge=0)
    truncated: int = Field(ge=0)
    tokens: int = Field(ge=0)
    supervised_tokens: int = Field(0, ge=0)
    images: int = Field(0, ge=0)

    @classmethod
    def of(cls, sources: list[SourceCounts]) -> "Totals":
        """The sums over the sources (what a manifest's ``totals`` must be)."""
        return cls(**{k: sum(sum(s.quarantined.values()) if k == "quarantined" else getattr(s, k) for s in sources)
                      for k in cls.model_fields})


class ShardEntry(BaseModel):
    model_config = _OPEN
    path: str = Field(description="relative to the build directory, e.g. shards/shard-00000.arrow")
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Timing(BaseModel):
    model_config = _OPEN
    started_at: str
    finished_at: str
    seconds: float


class Manifest(BaseModel):
    """``DIR/manifest.json``: written last, atomically; a build directory without it is unfinished."""

    model_config = ConfigDict(extra="allow", title="Parsit build manifest")
    format_version: int = Field(description="bumped on incompatible changes to shards or manifest")
    parsit_version: str
    config: dict[str, Any] = Field(description="every output-deciding build option")
    config_hash: str = Field(description="sha256 of config plus tokenizer and input fingerprints")
    tokenizer: TokenizerEntry
    template: dict[str, Any] = Field(description="template name, label_policy, system prompt, turn format")
    image_token_index: int = Field(description="the id of one image placeholder in input_ids (-200)")
    ignore_index: int = Field(description="the label of an unsupervised position (-100)")
    vision: VisionEntry
    video: VideoEntry | None = Field(None, description="video sampling and pixels (null: the build took no video)")
    sources: list[SourceEntry]
    totals: Totals
    shards: list[ShardEntry]
    timing: Timing | None = Field(None, description="the only part that differs between identical builds")

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        t, want = self.totals, Totals.of(self.sources)
        for key in Totals.model_fields:
            if getattr(t, key) != getattr(want, key):
                raise ValueError(f"totals.{key} is {getattr(t, key)} but the sources add up to {getattr(want, key)}")
        rows = sum(s.rows for s in self.shards)
        if rows != t.kept:
            raise ValueError(f"the shards hold {rows} rows but totals.kept is {t.kept}")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names are not unique: {names}")
        return self

    def to_bytes(self) -> bytes:
        """``manifest.json`` as written: two-space indent, keys in model order, UTF-8, final newline."""
        return (json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n").encode()


def load_manifest(build_dir: str | Path) -> Manifest:
    """Read and validate ``DIR/manifest.json``; a clear error when it is missing, foreign or broken."""
    from parsit_data.format.fsio import location

    build_dir = location(build_dir, "build")  # a local folder or a URI (s3://...)
    path = build_dir / MANIFEST_NAME
    if not build_dir.is_dir():
        raise ParsitError(f"build directory {build_dir} does not exist: pass the DIR that parsit-data build wrote")
    if not path.is_file():
        raise ParsitError(
            f"{build_dir} has no {MANIFEST_NAME}: the build is unfinished (the manifest is written last) or this "
            "is not a finished build directory; run `parsit-data build` again to finish it"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParsitError(f"{path} is not readable JSON: {exc}; rebuild {build_dir}") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version not in READABLE_VERSIONS:
        raise ParsitError(f"{path} has format_version {version!r}; this Parsit reads version(s) "
                          f"{', '.join(map(str, READABLE_VERSIONS))}: rebuild with this version")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ParsitError(f"{path} is not a valid Parsit manifest: {exc}") from None


def write_manifest(build_dir, manifest: Manifest) -> Path:
    """Write ``manifest.json``, atomically: the build's commit marker, so the last file a build writes."""
    from parsit_data.format.constants import build_files
    from parsit_data.format.shards import atomic_write_bytes

    path = build_files(build_dir).manifest
    atomic_write_bytes(path, manifest.to_bytes())
    return path
