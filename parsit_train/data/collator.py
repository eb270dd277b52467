"""Rows to a padded batch: image placeholders expanded, attention from lengths, nothing over max_length.

A row stores each image as ONE placeholder id (-200) and ``num_image_tokens[j]`` says how many visual
tokens image ``j`` becomes. The collator repeats the model's image token id (Qwen3: ``<|image_pad|>``,
151655) that many times, with label -100 on each, which is what ``LlavaForConditionalGeneration``
expects: it scatters one image feature per image token, in order.

Padding is on the right with the explicit pad id; labels are padded with -100; ``attention_mask`` is
built from each row's length, never from ``input_ids != pad_id``: with pad = eos (a common choice), a
mask derived from ids would hide every real eos and the model would never learn to stop.

Length policy: ERROR, never truncation. A row longer than ``max_length`` after expansion raises a
ParsitError naming the sample (the dataset already refuses such builds at open, so this only fires on an
inconsistent build). Truncating here could cut an image's tokens apart, and the build already had the
chance to truncate at a turn boundary.

Targets: ``targets`` are the labels shifted by one PER SAMPLE (position t holds the label of token t+1 of
the same sample; a sample's last position holds -100), which is what the trainer's loss reads, so no
position is ever trained on another sample's token.

Output: a frozen :class:`parsit_train.data.batch.Batch` (typed fields; the loop reads
``batch.num_supervised``, never a key).

Video (OneVision, :mod:`parsit_train.data.video_batch`): the constructor takes the model's
``video_token_id`` (derived from the build view like the image token id), the run's ``video_processor``
(:class:`parsit_train.data.video_pixels.VideoPixels`, None when no row has a video) and ``blank_video``;
:meth:`Collator._sequence` expands each row's -201 sentinel to ``num_video_tokens`` video tokens (label
-100) next to the -200 expansion, and the batch's ``pixel_values_videos`` is a tuple with one float32
``[frames_i, 3, H, W]`` per video in token order. With ``blank_video``, a micro-batch without video gets one
black one-frame video (its tokens after everything else, never supervised).

Packing: items carrying a ``pack`` slot (the sampler's ``(index, slot)`` keys) are concatenated into one
row per slot, with ``position_ids`` restarting at 0 for each sample and NO ``attention_mask`` (None): the
model's packed-sequence masking reads the boundaries from ``position_ids`` (see docs/PACKING.md). Padding
after the last sample is a segment of its own. Under flash attention the trainer hands the model a packed
micro-batch of several rows as ONE row (:func:`one_row`): transformers' flash path reads the boundaries
from ``position_ids`` only when the batch has one row.

Blank image: with ``blank_image=(size, tokens)``, a batch without any image gets one blank image after
its padding (masked out / its own segment, labels -100), so the vision tower runs on every rank.

Anyres families (LLaVA-NeXT, OneVision): with a :class:`parsit_train.data.pixels.FamilyPixels` as image
processor, every stored count is checked against the family's rule for the image's displayed size (and
the sample's image count), and the batch carries ``pixel_values`` ``[images, max patches, 3, S, S]``
(zeros after an image's own patches), ``image_sizes`` ``[images, 2]`` (height, width) and, for
OneVision, ``batch_num_images`` (images per sample, in order), as the family's processor makes them.

Example (pad 151643, image token 151655, 2 tokens per image)::

    row    input_ids [151644, -200, 198, 9707, 151645]  labels [-100, -100, -100, 9707, 151645]
    batch  input_ids [151644, 151655, 151655, 198, 9707, 151645, 151643, ...]
           labels    [-100,   -100,   -100,   -100, 9707, 151645, -100, ...]
           attention [1, 1, 1, 1, 1, 1, 0, ...]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info

from parsit_data.format import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from parsit_data.errors import ParsitError
from parsit_train.data.batch import Batch
from parsit_train.data.video_batch import append_blank_video, batch_rows, expand_video, video_pixels


def expand_images(
    input_ids: np.ndarray, labels: np.ndarray, num_image_tokens: Sequence[int], image_token_id: int, sample_id: str
) -> tuple[np.ndarray, np.ndarray]:
    """Replace each -200 by ``num_image_tokens[j]`` copies of ``image_token_id`` (labels -100)."""
    where = np.flatnonzero(input_ids == IMAGE_TOKEN_INDEX)
    if where.size != len(num_image_tokens):
        raise ParsitError(
            f"sample {sample_id!r} has {where.size} image placeholders but {len(num_image_tokens)} image token "
            "counts: the shard is inconsistent, rebuild it"
        )
    if where.size == 0:
        return input_ids.astype(np.int64), labels.astype(np.int64)
    repeats = np.ones(input_ids.shape[0], dtype=np.int64)
    repeats[where] = np.asarray(num_image_tokens, dtype=np.int64)
    labels = labels.astype(np.int64)
    labels[where] = IGNORE_INDEX
    ids = np.repeat(input_ids.astype(np.int64), repeats)
    ids[ids == IMAGE_TOKEN_INDEX] = image_token_id
    return ids, np.repeat(labels, repeats)


def _empty_pixels(shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 tensor; in a DataLoader worker, allocated in shared memory (as ``default_collate`` does)
    so that handing the batch to the main process does not copy it once more."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    strides = tuple(int(math.prod(shape[i + 1 :])) for i in range(len(shape)))
    storage = torch.UntypedStorage._new_shared(int(math.prod(shape)) * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape, strides)


class Collator:
    """Callable for ``DataLoader(collate_fn=...)`` over :class:`ShardDataset` items; returns a
    :class:`parsit_train.data.batch.Batch`.

    Complete when constructed and never changed after (assigning an attribute raises): DataLoader workers
    receive a copy of it when they start, so a change made later would reach some copies and not others.
    Whatever depends on the model (the image token id, the blank image's size and token count) is known
    before: the trainer derives it from the build view (:mod:`parsit_train.data.view`).
    """

    _frozen = False

    def __setattr__(self, name: str, value) -> None:
        if self._frozen:
            raise AttributeError(f"Collator.{name} cannot be set after construction: the collator is frozen "
                                 "(its DataLoader workers hold copies); pass it to the constructor")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Collator.{name} cannot be deleted: the collator is frozen")

    def __init__(
        self,
        pad_token_id: int,
        image_token_id: int,
        max_length: int,
        image_processor=None,
        pad_to_multiple_of: int | None = None,
        pack_length: int | None = None,
        blank_image: tuple[int, int] | None = None,
        loss_weighting: str = "token",
        video_token_id: int | None = None,
        video_processor=None,
        blank_video: bool = False,
    ) -> None:
        if image_token_id < 0:
            raise ParsitError(f"image_token_id {image_token_id} is not a vocabulary id: pass the model's image token id")
        if image_token_id == pad_token_id:
            raise ParsitError("image_token_id equals pad_token_id: the model could not tell images from padding")
        self.pad_token_id = int(pad_token_id)
        self.image_token_id = int(image_token_id)
        self.max_length = int(max_length)
        self.image_processor = image_processor
        self.tokens_per_crop = image_processor.tokens_per_image if image_processor is not None else None
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pack_length = None if pack_length is None else int(pack_length)
        self.blank_image = None if blank_image is None else (int(blank_image[0]), int(blank_image[1]))
        if loss_weighting not in ("token", "sample"):
            raise ParsitError(f"loss_weighting must be 'token' or 'sample', got {loss_weighting!r}")
        self.loss_weighting = loss_weighting
        #: The model's video token id (OneVision; from the build view), what a -201 sentinel expands to.
        self.video_token_id = None if video_token_id is None else int(video_token_id)
        #: The run's VideoPixels (parsit_train.data.video_pixels; None: no row has a video).
        self.video_processor = video_processor
        if blank_video and (video_processor is None or self.video_token_id is None):
            raise ParsitError("blank_video needs the run's video processor and the model's video_token_id")
        #: A micro-batch without video gets one black one-frame video (parsit_train.data.video_batch).
        self.blank_video = bool(blank_video)
        self._frozen = True

    def _check_crops(self, item: dict) -> None:
        if self.tokens_per_crop is None or "crops_per_image" not in item:
            return
        for j, (crops, tokens) in enumerate(zip(item["crops_per_image"], item["num_image_tokens"], strict=True)):
            if crops * self.tokens_per_crop != tokens:
                raise ParsitError(
                    f"sample {item['sample_id']!r}: the build counted {tokens} visual tokens for image {j}, the "
                    f"image processor made {crops} crops x {self.tokens_per_crop} tokens; the vision geometry of "
                    "the run and of the build disagree"
                )

    def _pixels(self, crops: list[np.ndarray]) -> torch.Tensor | None:
        if not crops:
            return None
        n = sum(c.shape[0] for c in crops)
        floats = crops[0].dtype == np.float32  # [n, 3, S, S] from the processor folder's image processor
        h, w = crops[0].shape[-2:] if floats else crops[0].shape[1:3]
        out = _empty_pixels((n, 3, h, w))
        view, k = out.numpy(), 0
        for c in crops:
            if floats:
                view[k : k + c.shape[0]] = c
            else:
                self.image_processor.normalise(c, out=view[k : k + c.shape[0]])
            k += c.shape[0]
        return out

    def _family_pixels(self, samples: list[dict]):
        """(pixel_values [images, max patches, 3, S, S], image_sizes [images, 2], batch_num_images or None)."""
        if not samples:
            return None, None, None
        images = [p for s in samples for p in s["pixels"]]
        most = max(p.shape[0] for p in images)
        _, c, h, w = images[0].shape
        out = _empty_pixels((len(images), most, c, h, w))
        view = out.numpy()
        for j, p in enumerate(images):
            view[j, : p.shape[0]] = p
            view[j, p.shape[0]:] = 0.0
        sizes = torch.tensor([hw for s in samples for hw in s["sizes"]], dtype=torch.long)
        onevision = self.image_processor.geometry.family == "llava_onevision"
        counts = torch.tensor([len(s["pixels"]) for s in samples], dtype=torch.long) if onevision else None
        return out, sizes, counts

    def _sequence(self, item: dict) -> tuple[np.ndarray, np.ndarray]:
        sid = item["sample_id"]
        if item["num_image_tokens"] and (item.get("image_crops") is None or self.image_processor is None):
            raise ParsitError(f"sample {sid!r} has images but no pixels: give the dataset and the collator the "
                              "run's ImageProcessor")
        self._check_crops(item)
        if getattr(self.image_processor, "check_counts", None) is not None and item["num_image_tokens"]:
            self.image_processor.check_counts(item)  # anyres families: the family's count for each image
        ids, labels = expand_images(
            np.asarray(item["input_ids"]), np.asarray(item["labels"]), item["num_image_tokens"],
            self.image_token_id, sid,
        )
        ids, labels = expand_video(ids, labels, item, self.video_token_id)
        limit = self.pack_length or self.max_length
        if ids.shape[0] > limit:
            raise ParsitError(
                f"sample {sid!r} has {ids.shape[0]} tokens with its images expanded, over "
                f"{'pack_length' if self.pack_length else 'max_length'}={limit}; the loader does not truncate: "
                f"rebuild with --max-length {limit}"
            )
        return ids, labels

    def __call__(self, items: Sequence[dict]) -> Batch:
        seqs, crops = [], []
        for item in items:
            seqs.append(self._sequence(item))
            if item.get("image_crops") is not None:
                crops.append(item["image_crops"])
        rows = batch_rows(items)  # which sequences each batch row holds (packed: the sampler's pack slot)
        packed = any(len(r) > 1 for r in rows) or any("pack" in it for it in items)
        lengths = [sum(seqs[k][0].shape[0] for k in r) for r in rows]
        width = max(lengths)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = min(self.pack_length or self.max_length, -(-width // m) * m)
        blank = self.blank_image is not None and not crops
        family = getattr(self.image_processor, "anyres", False)  # patches per image, image_sizes
        if blank and family:  # the family's own blank image (its token count is the family's)
            blank_pixels, blank_size, blank_tokens = self.image_processor.blank()
            crops = [{"pixels": [blank_pixels], "sizes": [blank_size]}]
        extra = (blank_tokens if family else self.blank_image[1]) if blank else 0
        bsz, total = len(rows), width + extra
        input_ids = torch.full((bsz, total), self.pad_token_id, dtype=torch.long)
        labels = torch.full((bsz, total), IGNORE_INDEX, dtype=torch.long)
        targets = torch.full((bsz, total), IGNORE_INDEX, dtype=torch.long)
        weights = torch.zeros((bsz, total), dtype=torch.float32) if self.loss_weighting == "sample" else None
        position_ids = torch.zeros((bsz, total), dtype=torch.long)
        attention = torch.zeros((bsz, total), dtype=torch.long)
        samples_supervised = 0
        for b, members in enumerate(rows):
            at = 0
            for k in members:
                ids, lab = seqs[k]
                n = ids.shape[0]
                input_ids[b, at : at + n] = torch.from_numpy(ids)
                labels[b, at : at + n] = torch.from_numpy(lab)
                # Shifted per sample: position t predicts token t+1 of the same sample; a sample's last
                # position predicts nothing, so no target ever crosses into the next sample.
                tgt = torch.from_numpy(lab[1:])
                targets[b, at : at + n - 1] = tgt
                supervised = int((tgt != IGNORE_INDEX).sum())
                samples_supervised += supervised > 0
                if weights is not None and supervised:
                    weights[b, at : at + n - 1] = (tgt != IGNORE_INDEX).float() / supervised
                position_ids[b, at : at + n] = torch.arange(n)
                attention[b, at : at + n] = 1
                at += n
            # Padding (and a blank image) is one trailing segment of its own: positions restart at 0.
            position_ids[b, at:] = torch.arange(total - at)
        image_sizes = batch_num_images = None
        if family:
            pixels, image_sizes, batch_num_images = self._family_pixels(crops)
        else:
            pixels = self._pixels(crops)
        if blank and family:
            input_ids[0, width:] = self.image_token_id
        elif blank:
            input_ids[0, width:] = self.image_token_id
            pixels = torch.zeros((1, 3, self.blank_image[0], self.blank_image[0]), dtype=torch.float32)
        real = int(attention.sum())
        fields = dict(
            input_ids=input_ids,
            labels=labels,
            targets=targets,
            target_weights=weights,
            # Packed: no attention mask (the model reads the sample boundaries from position_ids);
            # padded: the mask from lengths, and position ids left to the model.
            attention_mask=None if packed else attention,
            position_ids=position_ids if packed else None,
            pixel_values=pixels,
            image_sizes=image_sizes,
            batch_num_images=batch_num_images,
            sample_ids=tuple(it["sample_id"] for it in items),
            num_tokens=real,
            num_padded=int(input_ids.numel()),
            num_supervised=int((targets != IGNORE_INDEX).sum()),
            num_samples_supervised=int(samples_supervised),
            pixel_values_videos=video_pixels(items, self.video_processor),
        )
        if fields["pixel_values_videos"] is None and self.blank_video:
            append_blank_video(fields, self.video_processor, self.video_token_id, self.pad_token_id)
        return Batch(**fields)


def one_row(batch: Batch) -> Batch:
    """:meth:`Batch.one_row` (a packed batch as one row, for flash attention)."""
    return batch.one_row()
