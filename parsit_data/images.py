"""Images: safe path resolution, guarded decoding, optional re-encoding, visual token counts.

Hostile input is ordinary input. A path must stay inside the image root (no absolute path, no '..',
no symlink that leads out) and is checked *before* the file is opened. Decoding runs under a pixel
limit (decompression bombs) with ``LOAD_TRUNCATED_IMAGES`` left off, so a truncated file is rejected
instead of padded with grey.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from PIL import Image, ImageFile

from parsit_data.records import Reject

assert not ImageFile.LOAD_TRUNCATED_IMAGES, "truncated images must be rejected, not padded"

Aspect = Literal["pad", "square", "anyres"]

DEFAULT_MAX_PIXELS = 64_000_000  # ~ 8000 x 8000


@dataclass(frozen=True)
class VisionGeometry:
    """What the vision tower sees; decides each image's number of visual tokens.

    Defaults are SigLIP so400m-patch14-384: (384 // 14) ** 2 = 27 ** 2 = 729 tokens per crop.
    """

    image_size: int = 384
    patch_size: int = 14
    aspect: Aspect = "pad"
    grid_pinpoints: tuple[tuple[int, int], ...] = ((384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152))

    @property
    def tokens_per_crop(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def tokens_for(self, width: int, height: int) -> int:
        if self.aspect != "anyres":
            return self.tokens_per_crop
        bw, bh = select_best_resolution((width, height), self.grid_pinpoints)
        crops = math.ceil(bw / self.image_size) * math.ceil(bh / self.image_size)
        return (crops + 1) * self.tokens_per_crop  # grid crops + the base image

    def to_json(self) -> dict:
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "aspect": self.aspect,
            "tokens_per_image": self.tokens_per_crop,
            "grid_pinpoints": [list(p) for p in self.grid_pinpoints],
        }


def select_best_resolution(size: tuple[int, int], pinpoints) -> tuple[int, int]:
    """LLaVA-NeXT's rule: the pinpoint that keeps the most effective resolution, then the least waste."""
    w, h = size
    best, best_eff, best_waste = None, -1, float("inf")
    for pw, ph in pinpoints:
        scale = min(pw / w, ph / h)
        dw, dh = int(w * scale), int(h * scale)
        eff = min(dw * dh, w * h)
        waste = pw * ph - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (pw, ph), eff, waste
    return best


@dataclass(frozen=True)
class ImageOptions:
    root: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 0
    max_side: int | None = None  # re-encode images whose longer side exceeds this
    check: Literal["full", "header"] = "full"


@dataclass(frozen=True)
class LoadedImage:
    rel_path: str
    data: bytes
    width: int  # original size
    height: int


def resolve_image_path(rel: str, root: Path | None) -> Path:
    """The file a record names, or Reject(image_outside_root) — decided before anything is opened."""
    if root is None:
        raise Reject("image_missing", f"image {rel!r} given but no --image-root was set")
    if rel == "" or "\x00" in rel:
        raise Reject("image_missing", f"image path {rel!r} is empty or invalid")
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        raise Reject("image_outside_root", f"image path {rel!r} is absolute")
    if ".." in pure.parts:
        raise Reject("image_outside_root", f"image path {rel!r} contains '..'")
    root_real = Path(os.path.realpath(root))
    candidate = root_real / Path(*pure.parts)
    real = Path(os.path.realpath(candidate))
    if real != root_real and root_real not in real.parents:
        raise Reject("image_outside_root", f"image path {rel!r} resolves outside the image root (symlink)")
    if not real.is_file():
        raise Reject("image_missing", f"image {rel!r} does not exist under {root}")
    return real


def _open_checked(data: bytes, rel: str, opts: ImageOptions) -> Image.Image:
    if not data:
        raise Reject("image_unreadable", f"image {rel!r} is an empty file")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
    except Image.DecompressionBombError as exc:
        raise Reject("image_too_large", f"image {rel!r}: {exc}") from None
    except Exception as exc:  # PIL raises many types for garbage; all mean "not an image"
        raise Reject("image_unreadable", f"image {rel!r}: {exc}") from None
    if w * h > opts.max_pixels:
        raise Reject("image_too_large", f"image {rel!r} is {w}x{h}, over the {opts.max_pixels}-pixel limit")
    if opts.check == "full":
        try:
            img.load()
        except Exception as exc:
            raise Reject("image_unreadable", f"image {rel!r} cannot be decoded: {exc}") from None
    if opts.min_side and min(w, h) < opts.min_side:
        raise Reject("image_too_small", f"image {rel!r} is {w}x{h}, shorter side under {opts.min_side}")
    return img


def _reencode(img: Image.Image, max_side: int) -> bytes:
    """Downscale so the longer side is ``max_side``; JPEG (or PNG with alpha). Deterministic."""
    img.load()
    scale = max_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    has_alpha = img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)
    out = io.BytesIO()
    if has_alpha:
        img.convert("RGBA").resize(size, Image.Resampling.BICUBIC).save(out, format="PNG", optimize=False)
    else:
        img.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(out, format="JPEG", quality=90)
    return out.getvalue()


def load_image(rel: str, opts: ImageOptions) -> LoadedImage:
    path = resolve_image_path(rel, opts.root)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Reject("image_unreadable", f"image {rel!r} cannot be read: {exc.strerror}") from None
    img = _open_checked(data, rel, opts)
    w, h = img.size
    if opts.max_side and max(w, h) > opts.max_side:
        try:
            data = _reencode(img, opts.max_side)
        except Exception as exc:
            raise Reject("image_unreadable", f"image {rel!r} cannot be decoded: {exc}") from None
    return LoadedImage(rel_path=rel, data=data, width=w, height=h)
