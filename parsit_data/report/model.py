"""The data quality report as a pydantic model: ``report.json`` is this model, ``report.html`` renders it.

The HTML is a pure function of this model (plots included: the histograms travel in it), so a reader
of ``report.json`` sees every number the page shows. Its JSON Schema is ``schemas/report.schema.json``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from parsit_data.format import schema_document, schema_text

REPORT_VERSION = 1

Status = Literal["ok", "warn", "fail"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Check(_M):
    """One go/no-go signal."""

    name: str
    status: Status
    value: str = Field(description="the measured value, as shown")
    message: str = Field(description="what it means and what to do")


class Quantiles(_M):
    """From a fixed-bin histogram: exact below 128, else the bin's upper edge (at most 1/64 above)."""

    n: int
    mean: float | None
    min: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None


class Bin(_M):
    lo: float
    hi: float = Field(description="inclusive upper edge for integer metrics, exclusive for shares")
    count: int


class Distribution(_M):
    metric: str
    label: str
    unit: str = Field(description="'row' (one value per kept sample), 'image' (one per image) or 'video' (one per "
                                  "kept video clip)")
    scheme: Literal["int", "share"]
    quantiles: Quantiles
    bins: list[Bin]


class SizeBin(_M):
    """Image sizes in 2-D bins (the ``int`` scheme on each axis)."""

    width_lo: int
    width_hi: int
    height_lo: int
    height_hi: int
    count: int


class ReasonExample(_M):
    source: str
    sample_id: str | None
    line: int | None = None
    index: int | None = None
    detail: str


class ReasonRow(_M):
    reason: str
    help: str = Field(description="what the reason code means")
    count: int
    by_source: dict[str, int]
    example: ReasonExample | None


class SourceReport(_M):
    name: str
    path: str
    format: str
    sampling: str
    read: int
    kept: int
    quarantined: int
    quarantine_rate: float
    quarantined_by_reason: dict[str, int]
    truncated: int
    overlong_dropped: int
    placeholder_inserted: int
    tokens: int = Field(description="multimodal tokens of kept rows")
    text_tokens: int
    supervised_tokens: int
    images: int
    duplicate_rows: int = Field(description="kept rows whose content (input_ids + images) repeats an earlier row "
                                            "of this source")
    distributions: dict[str, Distribution]
    image_sizes: list[SizeBin]


class DuplicateGroup(_M):
    digest: str
    count: int
    samples: list[str] = Field(description="up to 5 members, as 'source/sample_id' (or partition:row)")


class Duplicates(_M):
    method: str
    rows: int
    distinct: int
    duplicate_rows: int = Field(description="rows - distinct: the extra copies")
    groups: int = Field(description="distinct contents that occur more than once")
    cross_source_groups: int
    examples: list[DuplicateGroup]


class MixtureRow(_M):
    source: str
    sampling: str
    requested_samples: int = Field(description="records selected by the sampling strategy (read)")
    requested_share: float
    kept_samples: int
    achieved_samples_share: float
    tokens: int
    achieved_tokens_share: float
    supervised_tokens: int
    achieved_supervised_share: float
    delta_samples_share: float = Field(description="achieved - requested share of samples")


class Span(_M):
    text: str
    supervised: bool


class MaskedExample(_M):
    source: str
    sample_id: str
    images: int
    length: int
    spans: list[Span]


class TemplateReport(_M):
    name: str
    label_policy: str
    system_prompt: str | None
    details: dict[str, Any] = Field(description="the manifest's template block, as written")
    examples: list[MaskedExample] = Field(description="one built row per source, decoded from its own labels")
    manifest_example: Any = Field(None, description="the template's own mask-report example, when the manifest "
                                                    "carries one")


class VideoReport(_M):
    """The build's videos: the kept clips (their distributions are ``video_*`` metrics in ``overall`` and in
    each source's ``distributions``) and the refused ones, by reason. Absent when the build saw no video."""

    rows: int = Field(description="kept rows with a video")
    frames: int = Field(description="sampled frames stored, over all kept videos")
    tokens: int = Field(description="video tokens of the kept rows (num_video_tokens)")
    duration_s: float = Field(description="total duration of the kept source clips")
    rejected: int = Field(description="records quarantined with a video reason (video_*)")
    rejected_by_reason: dict[str, int] = Field(description="video reason -> records, most frequent first")
    sizes: list[SizeBin] = Field(description="the source clips' width x height")
    sampling: dict[str, Any] | None = Field(description="the manifest's video block: frames, fps, size, ...")


class Summary(_M):
    verdict: Literal["go", "review", "no-go"]
    sources: int
    read: int
    kept: int
    quarantined: int
    quarantine_rate: float
    truncated: int
    overlong_dropped: int
    over_max_length: int = Field(description="rows over --max-length: truncated + dropped")
    max_length: int | None
    duplicate_rows: int
    zero_supervised_rows: int
    tokens: int
    text_tokens: int
    supervised_tokens: int
    images: int
    shards: int
    shard_bytes: int


class TopImage(_M):
    """One of the images with the most visual tokens: what dominates sequence length."""

    source: str
    sample_id: str
    image: int = Field(description="the image's index in its row")
    path: str
    width: int = Field(description="displayed width (after the EXIF policy)")
    height: int
    tokens: int = Field(description="visual tokens of this image")
    grid: list[int] = Field(description="[rows, columns] of anyres crops besides the base crop; [0, 0] for none")
    crops: int = Field(description="crops the vision tower encodes: base + grid")
    row_length: int = Field(description="multimodal length of the row the image is in")


class Report(_M):
    report_version: int = REPORT_VERSION
    parsit_version: str
    format_version: int
    config_hash: str
    build: dict[str, Any] = Field(description="the build options that decide the output")
    summary: Summary
    checks: list[Check]
    sources: list[SourceReport]
    overall: dict[str, Distribution]
    image_sizes: list[SizeBin]
    top_images: list[TopImage] = Field(default_factory=list, description=(
        "the images with the most visual tokens, over all sources (most first)"))
    reasons: list[ReasonRow]
    duplicates: Duplicates
    mixture: list[MixtureRow]
    template: TemplateReport
    tokenizer: dict[str, Any]
    vision: dict[str, Any]
    image_token_index: int
    ignore_index: int
    precision: str = Field(description="how quantiles are computed and how exact they are")
    video: VideoReport | None = Field(None, description="the video section; absent when the build saw no video")
    near_duplicates: dict[str, Any] | None = Field(None, description=(
        "near duplicates and benchmark contamination (DIR/dedup.json, parsit_data.dedup.section); absent when the "
        "build ran no global pass"))


REPORT_SCHEMA_TITLE = "Parsit data quality report (report.json)"


def report_json_schema() -> dict:
    """The JSON Schema of ``report.json`` (what ``schemas/report.schema.json`` holds)."""
    return schema_document(Report, REPORT_SCHEMA_TITLE)


if __name__ == "__main__":  # python -m parsit_data.report.model > schemas/report.schema.json
    print(schema_text(Report, REPORT_SCHEMA_TITLE), end="")
