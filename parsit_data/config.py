"""The build configuration: parsed once, validated together, hashed into the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from parsit_data.format.vision import VisionGeometry
from parsit_data.images import ImageOptions


class BuildConfig(BaseModel):
    """Every option of ``parsit-data build``. Fields under ``RUNTIME_FIELDS`` do not change the output."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(min_length=1, description="JSON, JSONL or YAML mixture files")
    out: str = Field(description="output build directory")
    tokenizer: str = Field("qwen3", description="tokenizer folder, or 'qwen3' for the bundled Qwen3 tokenizer")
    template: str = "qwen_1_5"
    label_policy: str = "native"
    system_prompt: str | None = None
    pad_token: str | None = None
    image_root: str | None = None
    max_length: int | None = Field(None, gt=0)
    overlong: Literal["drop", "truncate"] = "drop"
    shard_rows: int = Field(2048, gt=0)
    seed: int = 0
    # images
    image_max_side: int | None = Field(None, gt=0)
    min_image_side: int = Field(0, ge=0)
    max_image_pixels: int = Field(64_000_000, gt=0)
    image_check: Literal["full", "header"] = "full"
    fix_missing_placeholder: bool = False
    # vision geometry
    image_size: int = Field(384, gt=0)
    patch_size: int = Field(14, gt=0)
    aspect: Literal["pad", "square", "anyres"] = "pad"
    grid_pinpoints: list[tuple[int, int]] = Field(
        default_factory=lambda: [(384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152)]
    )
    # runtime only
    engine: Literal["local", "ray", "auto"] = "local"
    workers: int | None = Field(None, gt=0, description="Ray workers; None: one per CPU of the cluster")
    ray_address: str | None = None
    overwrite: bool = False
    progress: bool = False

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("out", "engine", "workers", "ray_address", "overwrite", "progress")

    @field_validator("patch_size")
    @classmethod
    def _patch_fits(cls, v, info):
        size = info.data.get("image_size")
        if size is not None and v > size:
            raise ValueError(f"patch_size {v} is larger than image_size {size}")
        return v

    @property
    def geometry(self) -> VisionGeometry:
        return VisionGeometry(self.image_size, self.patch_size, self.aspect, tuple(map(tuple, self.grid_pinpoints)))

    @property
    def image_options(self) -> ImageOptions:
        return ImageOptions(
            root=Path(self.image_root) if self.image_root else None,
            max_pixels=self.max_image_pixels,
            min_side=self.min_image_side,
            max_side=self.image_max_side,
            check=self.image_check,
        )

    def output_config(self) -> dict:
        """The options that decide the output bytes (what goes into the manifest and its hash)."""
        data = self.model_dump(mode="json")
        for k in self.RUNTIME_FIELDS:
            data.pop(k, None)
        return data


def config_hash(output_config: dict, fingerprints: dict) -> str:
    """sha256 of the output-deciding config plus the input and tokenizer fingerprints."""
    blob = json.dumps({"config": output_config, "fingerprints": fingerprints}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
