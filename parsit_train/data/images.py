"""Embedded image bytes to pixel values for a SigLIP-style vision tower.

The geometry comes from the manifest's ``vision`` block, so the pixels always match the number of visual
tokens the build counted for each image:

- ``square``: resize to ``image_size``²; one crop.
- ``pad``: pad to a square with the mean colour (LLaVA's ``expand2square``), then resize; one crop.

``anyres`` is the LLaVA-NeXT / OneVision families' (``parsit_train.data.pixels``: the family's own image
processor, the model's own feature count); this module is plain LLaVA's one crop per image.

Normalisation is ``(x / 255 - mean) / std`` per channel; SigLIP uses mean = std = 0.5. Decoding keeps
Pillow's decompression-bomb limit and never loads truncated files.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from parsit_data.errors import ParsitError

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
#: Refuse images with more pixels than this (Pillow's own default limit).
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class ImageProcessor:
    """Turns a row's encoded images into one float32 array of crops ``[n, 3, S, S]``."""

    def __init__(
        self,
        vision: dict,
        mean: Sequence[float] = SIGLIP_MEAN,
        std: Sequence[float] = SIGLIP_STD,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        resample: int = Image.Resampling.BICUBIC,
    ) -> None:
        if not vision or "image_size" not in vision:
            raise ParsitError("the manifest has no vision.image_size: rebuild with the vision tower's geometry")
        self.size = int(vision["image_size"])
        self.aspect = vision.get("aspect", "pad")
        if self.aspect == "anyres":
            raise ParsitError("aspect 'anyres' belongs to the llava_next / llava_onevision families "
                              "(parsit_train.data.pixels.FamilyPixels), not to plain LLaVA's one crop")
        if self.aspect not in {"pad", "square"}:
            raise ParsitError(f"unknown aspect mode {self.aspect!r} in the manifest: expected pad or square")
        # the family's count for one crop (CLS and strategy arithmetic included); a pre-family manifest: its own
        self.tokens_per_image = int(vision.get("tokens_per_image") or (self.size // int(vision["patch_size"])) ** 2)
        if vision.get("family"):
            from parsit_data.format.vision import VisionGeometry

            self.tokens_per_image = VisionGeometry.from_json(vision).tokens_for(self.size, self.size, 1)
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, dtype=np.float32) * 255.0)
        # LLaVA's expand2square (and transformers' LlavaImageProcessor): int(), so mean 0.5 pads with 127.
        self.background = tuple(int(m * 255) for m in mean)
        self.max_pixels = int(max_pixels)
        self.resample = resample

    # -- decoding ----------------------------------------------------------------------------------

    def decode(self, data: bytes, sample_id: str = "?") -> Image.Image:
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > self.max_pixels:
                raise ParsitError(
                    f"image of sample {sample_id!r} has {img.width}x{img.height} pixels, over the limit of "
                    f"{self.max_pixels}: rebuild with --image-max-side"
                )
            img.load()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise ParsitError(f"cannot decode an image of sample {sample_id!r}: {exc}; rebuild the shard") from exc
        return img.convert("RGB") if img.mode != "RGB" else img

    # -- geometry ----------------------------------------------------------------------------------

    def normalise(self, crops: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 crops ``[n, S, S, 3]`` to float32 ``[n, 3, S, S]``, written into ``out`` when given.

        One pass from uint8 into the float buffer, then one in-place scale: about 10x faster than
        converting to float first and normalising with temporaries. The collator passes a slice of the
        batch tensor (in shared memory inside a worker), so pixels are written once and never copied.
        """
        if out is None:
            out = np.empty((crops.shape[0], 3, crops.shape[1], crops.shape[2]), dtype=np.float32)
        np.subtract(crops.transpose(0, 3, 1, 2), self.mean[:, None, None], out=out, casting="unsafe")
        out *= self.inv_std[:, None, None]
        return out

    def _square(self, img: Image.Image) -> Image.Image:
        if img.size == (self.size, self.size):
            return img
        return img.resize((self.size, self.size), self.resample)

    def _pad_square(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if w != h:
            side = max(w, h)
            canvas = Image.new("RGB", (side, side), self.background)
            canvas.paste(img, ((side - w) // 2, (side - h) // 2))
            img = canvas
        return self._square(img)

    def crops(self, img: Image.Image, original: tuple[int, int] | None = None) -> list[Image.Image]:
        if self.aspect == "square":
            return [self._square(img)]
        if self.aspect == "pad":
            return [self._pad_square(img)]
        raise ParsitError(f"unknown aspect mode {self.aspect!r}")

    def num_crops(self, original: tuple[int, int]) -> int:
        return 1

    def decode_crops(
        self, images: Sequence[bytes], sizes: Sequence[tuple[int, int]], sample_id: str = "?"
    ) -> tuple[np.ndarray | None, list[int]]:
        """All crops of a row's images as uint8 ``[n, S, S, 3]``; and how many crops each image gave.

        Kept as uint8 until the collator normalises them into the batch: a quarter of the bytes to move.
        """
        if not images:
            return None, []
        arrays, counts = [], []
        for j, data in enumerate(images):
            img = self.decode(data, sample_id)
            original = tuple(sizes[j]) if j < len(sizes) else img.size
            crops = self.crops(img, original)
            arrays.extend(np.asarray(c) for c in crops)
            counts.append(len(crops))
        return np.stack(arrays), counts

    def process_sample(
        self, images: Sequence[bytes], sizes: Sequence[tuple[int, int]], sample_id: str = "?"
    ) -> tuple[np.ndarray | None, list[int]]:
        """Normalised float32 pixel values ``[n, 3, S, S]`` of a row's images, and crops per image."""
        crops, counts = self.decode_crops(images, sizes, sample_id)
        return (None if crops is None else self.normalise(crops)), counts
