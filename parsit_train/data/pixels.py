"""Pixels made by the build's own processor: the anyres families (:class:`FamilyPixels`) and plain LLaVA built
from a ``LlavaProcessor`` folder (:class:`ProcessorPixels`).

Pixels of the anyres families (LLaVA-NeXT, LLaVA-OneVision), made by the family's own image processor.

:class:`FamilyPixels` is what the dataset and collator use in place of ``images.ImageProcessor`` when the
build's family is ``llava_next`` or ``llava_onevision``. Each row's images go through transformers'
``LlavaNextImageProcessorPil`` / ``LlavaOnevisionImageProcessorPil``, rebuilt from the processor config the
manifest stores verbatim, ONE CALL PER SAMPLE with the sample's images as one group: exactly what
``processor(images=[[...]], text=...)`` does for one prompt, so OneVision's multi-image rule (an image in a
sample of several is one padded square, not anyres patches) is applied by transformers itself.

Each image becomes ``[patches, 3, S, S]`` float32 (base crop first) and its ``(height, width)``; the
collator stacks a batch's images into ``pixel_values`` ``[images, max patches, 3, S, S]`` (zero patches
after an image's own, as the processor pads), ``image_sizes`` ``[images, 2]`` and, for OneVision,
``batch_num_images`` (images per sample, in order): what the model's ``get_image_features`` slices.

Decoding applies the EXIF orientation (``ImageOps.exif_transpose``, transformers' ``load_image`` policy);
the decoded size must be the displayed size the build recorded and counted.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from parsit_data.errors import ParsitError
from parsit_data.format.vision import VisionGeometry
from parsit_train.families import describe, geometry_of, image_processor

DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485



def decode_checked(decode, images: Sequence[bytes], sizes: Sequence[tuple[int, int]], sample_id: str) -> list:
    """A row's images decoded by ``decode`` (EXIF applied), each checked against the size the build recorded."""
    decoded = []
    for j, data in enumerate(images):
        img = decode(data, sample_id)
        if j < len(sizes) and tuple(sizes[j]) != img.size:
            raise ParsitError(f"image {j} of sample {sample_id!r} decodes to {img.size[0]}x{img.size[1]} (EXIF "
                              f"applied), the build recorded {sizes[j][0]}x{sizes[j][1]}: rebuild the shard")
        decoded.append(img)
    return decoded

class FamilyPixels:
    """A row's encoded images -> per-image pixel patches and sizes, through the family's image processor."""

    #: The collator's crop check is the llava one; the anyres check is :meth:`check_counts`.
    tokens_per_image = None
    #: Pixels per image are ``[patches, 3, S, S]`` with ``image_sizes`` (the collator's anyres batch layout).
    anyres = True

    def __init__(self, vision: dict, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.geometry: VisionGeometry = geometry_of(vision)
        if self.geometry.family == "llava":
            raise ParsitError("FamilyPixels is for the llava_next / llava_onevision families")
        self.processor = image_processor(self.geometry)
        self.size = self.geometry.image_size
        self.max_pixels = int(max_pixels)

    def __getstate__(self) -> dict:
        return dict(self.__dict__)

    def decode(self, data: bytes, sample_id: str = "?") -> Image.Image:
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > self.max_pixels:
                raise ParsitError(f"image of sample {sample_id!r} has {img.width}x{img.height} pixels, over the "
                                  f"limit of {self.max_pixels}: rebuild with --image-max-side")
            img.load()
            img = ImageOps.exif_transpose(img)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise ParsitError(f"cannot decode an image of sample {sample_id!r}: {exc}; rebuild the shard") from exc
        return img.convert("RGB") if img.mode != "RGB" else img

    def process(self, images: Sequence[Image.Image]) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """One sample's decoded images -> (per image ``[patches, 3, S, S]`` float32, per image (h, w))."""
        out = self.processor(images=[list(images)], do_pad=False, return_tensors=None)
        pixels = [np.asarray(p, dtype=np.float32) for p in out["pixel_values"]]
        sizes = [tuple(int(x) for x in s) for s in out["image_sizes"]]
        return pixels, sizes

    def decode_crops(self, images: Sequence[bytes], sizes: Sequence[tuple[int, int]], sample_id: str = "?"):
        """(``{"pixels": [...], "sizes": [(h, w), ...]}`` or None, patches per image) for a row's images."""
        if not images:
            return None, []
        decoded = decode_checked(self.decode, images, sizes, sample_id)
        pixels, hw = self.process(decoded)
        n = len(decoded)
        for j, (p, (h, w)) in enumerate(zip(pixels, hw, strict=True)):
            want = self.geometry.crops_for(w, h, n)
            if p.shape[0] != want:  # transformers' processor and its model slice the same patches
                raise ParsitError(f"image {j} of sample {sample_id!r}: the image processor made {p.shape[0]} "
                                  f"patches, the model takes {want}")
        return {"pixels": pixels, "sizes": hw}, [p.shape[0] for p in pixels]

    def check_counts(self, item: dict) -> None:
        """Every stored per-image count equals the family's count for its displayed size."""
        sizes = item.get("image_sizes") or []
        n = len(item["num_image_tokens"])
        for j, (stored, (w, h)) in enumerate(zip(item["num_image_tokens"], sizes, strict=True)):
            want = self.geometry.tokens_for(w, h, n)
            if int(stored) != want:
                raise ParsitError(
                    f"sample {item['sample_id']!r}: the build counted {stored} visual tokens for image {j} "
                    f"({w}x{h}, {n} image(s) in the sample), {self.geometry.family} makes {want} ({describe(self.geometry)}); "
                    "the build's and the run's vision geometry disagree: rebuild with the model's --processor")

    def blank(self) -> tuple[np.ndarray, tuple[int, int], int]:
        """One black crop-sized image: (its patches, (h, w), its visual tokens), for a batch without images."""
        img = Image.new("RGB", (self.size, self.size), (0, 0, 0))
        pixels, sizes = self.process([img])
        return pixels[0], sizes[0], self.geometry.tokens_for(self.size, self.size, 1)


class ProcessorPixels:
    """Plain LLaVA built from a ``LlavaProcessor`` folder (``--processor``): each image through the folder's own
    image processor (CLIP: resize the shortest edge, centre crop, CLIP mean/std; as its config says), one
    crop ``[1, 3, S, S]`` float32 per image, exactly what ``LlavaProcessor`` feeds
    ``LlavaForConditionalGeneration``. The count per image is the family's (CLS kept by ``full``, dropped by
    ``default``), checked by the collator against every stored count."""

    def __init__(self, vision: dict, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.geometry: VisionGeometry = geometry_of(vision)
        if self.geometry.family != "llava" or not self.geometry.image_processor:
            raise ParsitError("ProcessorPixels is for llava builds made with --processor (a LlavaProcessor folder)")
        self.processor = image_processor(self.geometry)
        self.size = self.geometry.image_size
        self.tokens_per_image = self.geometry.tokens_for(self.size, self.size, 1)
        self.max_pixels = int(max_pixels)

    def decode(self, data: bytes, sample_id: str = "?") -> Image.Image:
        return FamilyPixels.decode(self, data, sample_id)  # EXIF applied, pixel limit, clear errors

    def decode_crops(self, images: Sequence[bytes], sizes: Sequence[tuple[int, int]], sample_id: str = "?"):
        """(float32 ``[images, 3, S, S]`` or None, one crop per image)."""
        if not images:
            return None, []
        decoded = decode_checked(self.decode, images, sizes, sample_id)
        out = self.processor(images=decoded, return_tensors=None)
        pixels = np.stack([np.asarray(p, dtype=np.float32) for p in out["pixel_values"]])
        if pixels.shape[1:] != (3, self.size, self.size):
            raise ParsitError(f"the build's image processor makes pixels of shape {pixels.shape[1:]}, the vision tower "
                              f"takes (3, {self.size}, {self.size}): its crop_size and the build's geometry disagree")
        return pixels, [1] * len(decoded)
