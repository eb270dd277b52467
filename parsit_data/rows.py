"""Row assembly and the length policy, over typed records; one partition's counters.

After tokenization a record is a :class:`~parsit_data.records.Record` with its
:class:`~parsit_data.encode.Tokenized` ids and labels and its loaded images. :func:`fit_length` applies
``--max-length`` / ``--overlong`` to it (a :class:`Row`, or an ``overlong`` rejection);
:class:`PartitionRows` gathers a partition's rows as shard columns and its quarantine lines, and holds
its counters: every counter of a partition (read, kept, quarantined by reason, truncated, tokens ...)
is incremented here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from parsit_data.dedup.signatures import SignatureRows
from parsit_data.encode import Tokenized
from parsit_data.format import IGNORE_INDEX, IMAGE_TOKEN_INDEX, VIDEO_COLUMNS
from parsit_data.format.constants import NO_VIDEO
from parsit_data.images import LoadedImage
from parsit_data.quarantine import quarantine_line
from parsit_data.reasons import Reason
from parsit_data.records import Record, Rejection
from parsit_data.sources import RawItem
from parsit_data.stats import PartitionStats
from parsit_data.video import LoadedVideo
from parsit_data.video_build import video_columns, video_share, video_signature


@dataclass(slots=True)
class Row:
    """One shard row before it becomes columns: the record, its tokens and images, its final length."""

    record: Record
    tokens: Tokenized
    images: list[LoadedImage]
    image_tokens: list[int]  # visual tokens per image
    length: int  # multimodal length: text tokens - placeholders + visual tokens
    truncated: bool
    video: LoadedVideo | None = None  # the sampled frames (parsit_data.video_build)
    video_tokens: int = 0


def image_counts(geometry, images: list[LoadedImage]) -> list[int]:
    """Visual tokens of each image of one sample (the count can depend on how many images it has:
    LLaVA-OneVision gives each image of a multi-image sample only its base crop and one newline)."""
    return [geometry.tokens_for(im.width, im.height, len(images)) for im in images]


def truncate(tok: Tokenized, record: Record, counts, max_length: int,
             video_at: tuple[int, int] | None = None) -> tuple[Tokenized, int] | None:
    """Cut after the last assistant turn that fits, never inside an image. None when nothing fits.

    ``counts(n)`` gives the visual tokens of the first ``n`` images when only those are kept (a cut
    can change the others' counts: OneVision's multi-image rule). Returns the cut tokens and how many
    of the record's images they keep. ``video_at``: the video sentinel's position and its visual tokens
    (a cut before it drops the video).
    """
    # Images sit inside user turns, so a turn boundary never splits an image's tokens.
    best = None
    for t, turn in enumerate(record.turns):
        end = tok.turn_ends.get(t)
        if end is None or turn.role != "assistant":
            continue
        n_img = tok.input_ids[:end].count(IMAGE_TOKEN_INDEX)
        extra = video_at[1] - 1 if video_at is not None and video_at[0] < end else 0
        if end - n_img + sum(counts(n_img)) + extra <= max_length:
            best = (end, n_img)
    if best is None:
        return None
    end, n_img = best
    labels = tok.labels[:end]
    return Tokenized(tok.input_ids[:end], labels, {}, sum(1 for x in labels if x != IGNORE_INDEX)), n_img


def fit_length(record: Record, tok: Tokenized, images: list[LoadedImage], geometry, max_length: int | None,
               overlong: str, video: LoadedVideo | None = None, video_spec=None) -> Row | Rejection:
    """The length policy: a row within ``max_length`` (cut at a turn boundary with ``overlong="truncate"``),
    or an ``overlong`` rejection. ``geometry`` gives each image's visual token count, ``video_spec`` the
    video's (:func:`parsit_data.video_build.video_share`)."""
    image_tokens = image_counts(geometry, images)
    vshare = video_share(tok, video, video_spec) if video is not None else None
    if type(vshare) is Rejection:
        return vshare
    vtokens = vshare[1] if vshare is not None else 0
    length = len(tok.input_ids) - len(images) + sum(image_tokens) + (vtokens - 1 if vshare is not None else 0)
    if max_length is None or length <= max_length:
        return Row(record, tok, images, image_tokens, length, False, video, vtokens)
    cut = None
    if overlong == "truncate":
        cut = truncate(tok, record, lambda n: image_counts(geometry, images[:n]), max_length, vshare)
    if cut is None:
        return Rejection(Reason.OVERLONG, f"multimodal length {length} exceeds --max-length {max_length}")
    tok, n_img = cut
    images = images[:n_img]
    image_tokens = image_counts(geometry, images)
    if vshare is not None and vshare[0] >= len(tok.input_ids):  # the cut dropped the turn holding the video
        video, vtokens = None, 0
    length = len(tok.input_ids) - n_img + sum(image_tokens) + (vtokens - 1 if video is not None else 0)
    return Row(record, tok, images, image_tokens, length, True, video, vtokens)


#: The shard's columns, in schema order (:data:`parsit_data.format.SHARD_SCHEMA`).
COLUMNS = ("sample_id", "source", "input_ids", "labels", "length", "num_image_tokens", "images", "image_sizes",
           "image_paths", "num_turns", "supervised_tokens", "truncated") + VIDEO_COLUMNS


class PartitionRows:
    """One partition's rows (as shard columns), quarantine lines and counters.

    Records may be rejected out of order (validation runs a chunk ahead of tokenization): each
    quarantine line carries the record's position in the partition and :meth:`quarantine_lines`
    returns them in input order.
    """

    def __init__(self, source: str, signatures: bool = False, user_turns: bool = False):
        self.stats = PartitionStats()
        #: Near-duplicate signatures of the rows (parsit_data.dedup), when the build asks for them.
        self.sigs = SignatureRows(user_turns=user_turns) if signatures else None
        self._counts = self.stats.source(source)
        self.cols: dict[str, list] = {f: [] for f in COLUMNS}
        self._qlines: list[tuple[int, str]] = []  # (position in the partition, line)

    def read(self, n: int) -> None:
        """``n`` more records were read."""
        self._counts.read += n

    def passed(self, notes: list[str]) -> None:
        """A record passed validation and rendering (with these fixes applied)."""
        if "placeholder_inserted" in notes:
            self._counts.placeholder_inserted += 1

    def reject(self, k: int, item: RawItem, sample_id: str | None, rej: Rejection) -> None:
        """The record at position ``k`` is quarantined."""
        self._qlines.append((k, quarantine_line(item, sample_id, rej)))
        self._counts.quarantined[rej.reason] += 1

    def add(self, row: Row) -> None:
        """A row of the shard."""
        cols, counts, tok, images, record = self.cols, self._counts, row.tokens, row.images, row.record
        supervised = tok.supervised
        cols["sample_id"].append(record.sample_id)
        cols["source"].append(record.source)
        cols["input_ids"].append(tok.input_ids)
        cols["labels"].append(tok.labels)
        cols["length"].append(row.length)
        cols["num_image_tokens"].append(row.image_tokens)
        cols["images"].append([im.data for im in images])
        cols["image_sizes"].append([{"width": im.width, "height": im.height} for im in images])
        cols["image_paths"].append([im.rel_path for im in images])
        cols["num_turns"].append(len(record.turns))
        cols["supervised_tokens"].append(supervised)
        cols["truncated"].append(row.truncated)
        for name, value in (NO_VIDEO if row.video is None else video_columns(row.video, row.video_tokens)).items():
            cols[name].append(value)
        if self.sigs is not None:  # a video signs as one more image (its middle frame), not as text alone
            sig_images = images if row.video is None else [*images, video_signature(row.video)]
            self.sigs.add(record.sample_id, record.position, record.turns, sig_images)
        if row.truncated:
            counts.truncated += 1
        counts.kept += 1
        counts.tokens += row.length
        counts.text_tokens += len(tok.input_ids)
        counts.supervised_tokens += supervised
        counts.images += len(images)

    def quarantine_lines(self) -> list[str]:
        """The partition's quarantine lines, in input order."""
        return [line for _, line in sorted(self._qlines, key=lambda kl: kl[0])]
