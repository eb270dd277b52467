"""One shard row, decoded for a human: what ``parsit-data inspect`` shows.

A row is found by its position in the build (rows counted across shards in shard order) or by its
``sample_id``; its ``input_ids`` are decoded in runs of supervised and unsupervised tokens, and each
image placeholder (-200) and a video's (-201) is reported with the number of visual tokens the collator will
expand it to; a video also with the frames sampled from its clip
(the decoding is :func:`parsit_data.decode.decode_runs`, the one every reader of a row uses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from parsit_data.errors import ParsitError
from parsit_data.format import VIDEO_TOKEN_INDEX, Build, open_build
from parsit_data.decode import decode_runs, tokenizer_decode
from parsit_data.tokenizer import load_tokenizer


@dataclass
class Piece:
    kind: str  # "text" (not supervised), "supervised", "image" or "video"
    text: str
    tokens: int  # text tokens in the piece, or the image's (video's) visual tokens


@dataclass
class RowView:
    index: int
    sample_id: str
    source: str
    length: int
    num_tokens: int
    supervised_tokens: int
    truncated: bool
    num_image_tokens: list[int]
    image_paths: list[str]
    input_ids: list[int]
    labels: list[int]
    #: per image: {"path", "width", "height", "tokens", "grid": (rows, cols) or None, "crops": int or None}
    images: list[dict] = field(default_factory=list)
    #: the row's video: {"path", "info" (the source clip: duration_s, fps, width, height, frames), "tokens",
    #: "frames": [(index in the clip, time in s), ...] in order, "stored": (width, height) of the first
    #: stored frame or None}; None for a row without video
    video: dict | None = None
    template: dict = field(default_factory=dict)
    tokenizer_path: str = ""  # the tokenizer the build names in its manifest
    pieces: list[Piece] = field(default_factory=list)


def _find(build: Build, index: int | None, sample_id: str | None) -> tuple[int, dict]:
    total = build.num_rows
    if index is not None and not 0 <= index < total:
        raise ParsitError(f"--index {index} is out of range: the build has {total} rows (0..{total - 1})")
    start = 0
    for k, rows in enumerate(build.shard_rows):
        if index is not None and not start <= index < start + rows:
            start += rows
            continue
        table = build.table(k)
        if index is not None:
            return index, table.slice(index - start, 1).to_pylist()[0]
        ids = table.column("sample_id").to_pylist()
        if sample_id in ids:
            j = ids.index(sample_id)
            return start + j, table.slice(j, 1).to_pylist()[0]
        start += rows
    raise ParsitError(f"no row has sample_id {sample_id!r} (quarantined records are in quarantine.jsonl)")


def load_row(build_dir: str | Path, index: int | None = None, sample_id: str | None = None,
             tokenizer: str | Path | None = None) -> RowView:
    """The row at ``index`` (default 0) or with ``sample_id``, decoded with the build's tokenizer."""
    if index is not None and sample_id is not None:
        raise ParsitError("pass either --index or --id, not both")
    build = open_build(build_dir, verify=False)  # sizes checked; a row is shown, not trained on
    if index is None and sample_id is None:
        index = 0
    pos, row = _find(build, index, sample_id)
    tok = load_tokenizer(tokenizer or build.manifest.tokenizer.path)
    view = RowView(
        index=pos, sample_id=row["sample_id"], source=row["source"], length=row["length"],
        num_tokens=len(row["input_ids"]), supervised_tokens=row["supervised_tokens"], truncated=row["truncated"],
        num_image_tokens=row["num_image_tokens"], image_paths=row["image_paths"], input_ids=row["input_ids"],
        labels=row["labels"], template=dict(build.manifest.template), tokenizer_path=build.manifest.tokenizer.path,
    )
    view.images = _image_views(build.manifest.vision, row)
    view.video = _video_view(row)
    image_i = pos = 0
    ids = row["input_ids"]
    for run in decode_runs(ids, row["labels"], tokenizer_decode(tok)):
        for p in run.pieces:
            at, pos = pos, pos + p.tokens
            if p.text is not None and ids[at] == VIDEO_TOKEN_INDEX and p.tokens == 1:  # the video's one sentinel
                n = view.video["tokens"] if view.video else 0
                frames = len(view.video["frames"]) if view.video else 0
                view.pieces.append(Piece("video", f"<video: {frames} frames, {n} visual tokens>", n))
            elif p.text is not None:
                view.pieces.append(Piece("supervised" if run.supervised else "text", p.text, p.tokens))
            else:
                n = row["num_image_tokens"][image_i] if image_i < len(row["num_image_tokens"]) else 0
                view.pieces.append(Piece("image", f"<image {image_i + 1}: {n} visual tokens>", n))
                image_i += 1
    return view


def _image_views(vision, row: dict) -> list[dict]:
    """Each image of the row with its displayed size, visual tokens and crop grid (the build's geometry)."""
    try:
        geometry = vision.geometry()
    except ParsitError:  # a manifest whose geometry is no longer valid (the old anyres rule): no grid shown
        geometry = None
    sizes, out = row["image_sizes"], []
    for j, (path, n) in enumerate(zip(row["image_paths"], row["num_image_tokens"])):
        w, h = int(sizes[j]["width"]), int(sizes[j]["height"])
        grid = geometry.grid_for(w, h, len(sizes)) if geometry is not None else None
        out.append({"path": path, "width": w, "height": h, "tokens": n, "grid": grid,
                    "crops": 1 + grid[0] * grid[1] if grid is not None else None})
    return out


def _video_view(row: dict) -> dict | None:
    """The row's video: the source clip, the frames sampled from it (index, time) and its video tokens."""
    if not row.get("video_path"):
        return None  # no video, or a shard of format 1/2 (no video columns)
    stored = None
    if row.get("video_frames"):
        from io import BytesIO

        from PIL import Image

        try:
            with Image.open(BytesIO(row["video_frames"][0])) as im:
                stored = im.size
        except OSError:  # shown, not trained on: an unreadable frame is reported by the loader
            stored = None
    return {"path": row["video_path"], "info": row.get("video_info") or {}, "tokens": int(row["num_video_tokens"]),
            "frames": list(zip(row["video_frame_indices"], row["video_frame_times"])), "stored": stored}
