"""Images: safe path resolution, guarded decoding, optional re-encoding, visual token counts.

Hostile input is ordinary input. A path must stay inside the image root (no absolute path, no '..',
no symlink that leads out) and is checked *before* the file is opened. Decoding runs under a pixel
limit (decompression bombs) with ``LOAD_TRUNCATED_IMAGES`` left off, so a truncated file is rejected
instead of padded with grey.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from PIL import Image, ImageFile, ImageOps

from parsit_data.errors import ParsitError
from parsit_data.format.fsio import RemotePath
from parsit_data.records import Reject

assert not ImageFile.LOAD_TRUNCATED_IMAGES, "truncated images must be rejected, not padded"

DEFAULT_MAX_PIXELS = 64_000_000  # ~ 8000 x 8000

#: What Pillow raises for bad image *data* (its plugins are not uniform: a broken PNG raises
#: SyntaxError, a short read EOFError or struct.error, a corrupt zlib stream zlib.error, ...). Not
#: MemoryError, RecursionError or anything else: those are the machine or a bug, and stop the build.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, struct.error, zlib.error,
    ZeroDivisionError, OverflowError, NotImplementedError)


def check_image_root(root: Path | RemotePath) -> None:
    """``--image-root`` must be a folder, or a prefix with objects under it: a missing or misspelt root
    would quarantine every image as ``image_missing`` instead of stopping at start."""
    if root.exists() and root.is_dir():
        return
    if isinstance(root, RemotePath) and not root.exists():
        raise ParsitError(f"--image-root {root}: no object under that prefix (a misspelt bucket or prefix?)")
    raise ParsitError(f"--image-root {root} is not a directory")


@dataclass(frozen=True)
class ImageOptions:
    root: Path | RemotePath | None = None  # a RemotePath: images are objects under that prefix
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 0
    max_side: int | None = None  # re-encode images whose longer side exceeds this
    check: Literal["full", "header"] = "full"
    exif_transpose: bool = True  # the EXIF policy: images are counted and stored upright (transformers' load_image)
    signatures: bool = False  # compute each image's perceptual hash (near-duplicate checks)


@dataclass(frozen=True)
class LoadedImage:
    rel_path: str
    data: bytes
    width: int  # displayed size (after the EXIF policy): the size of the stored pixels
    height: int
    phash: bytes | None = None  # perceptual hash (parsit_data.dedup.signatures.phash), when asked for


@dataclass(frozen=True)
class ImageInfo:
    """What ``parsit-data validate`` learns about an image: the same checks, no bytes kept."""

    rel_path: str
    width: int
    height: int


def resolve_image_path(rel: str, root: Path | RemotePath | None) -> Path | RemotePath:
    """The file a record names, or Reject(image_outside_root) -- decided before anything is opened.

    Only path arithmetic and ``realpath`` (which reads links, never opens their targets) happen here;
    the target's type is checked with ``stat`` so a FIFO or device inside the root is never opened either.
    """
    if root is None:
        raise Reject("image_missing", f"image {rel!r} given but no --image-root was set")
    if rel == "" or "\x00" in rel:
        raise Reject("image_missing", f"image path {rel!r} is empty or invalid")
    if "://" in rel:
        raise Reject("image_missing", f"image path {rel!r} is a URL: images are files under --image-root")
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        raise Reject("image_outside_root", f"image path {rel!r} is absolute")
    if ".." in pure.parts:
        raise Reject("image_outside_root", f"image path {rel!r} contains '..'")
    if isinstance(root, RemotePath):
        # An object store has no links: a relative key without '..' stays under the root's prefix.
        return root / "/".join(p for p in pure.parts if p != ".")
    root_real = _real_root(str(root))
    real = os.path.realpath(os.path.join(root_real, *pure.parts))
    if real != root_real and not real.startswith(root_real.rstrip(os.sep) + os.sep):
        raise Reject("image_outside_root", f"image path {rel!r} resolves outside the image root (symlink)")
    try:
        st = os.stat(real)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG, errno.EACCES, errno.ENOTDIR) and os.path.lexists(real):
            raise Reject("image_unreadable", f"image {rel!r} cannot be opened: {exc.strerror}") from None
        raise Reject("image_missing", f"image {rel!r} does not exist under {root}") from None
    if not stat.S_ISREG(st.st_mode):
        raise Reject("image_unreadable", f"image {rel!r} is not a regular file")
    return Path(real)


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


def _open_fd(path: Path, rel: str):
    """Open without following a symlink swapped in after the check (O_NOFOLLOW on the resolved path)."""
    try:
        # O_NONBLOCK: a FIFO swapped in after the stat check opens at once (and is refused below)
        # instead of blocking the build; it changes nothing for a regular file.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise Reject("image_unreadable", f"image {rel!r} cannot be opened: {exc.strerror}") from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise Reject("image_unreadable", f"image {rel!r} is not a regular file")
    return f


def max_file_bytes(max_pixels: int) -> int:
    """No image within the pixel limit needs more bytes than this (16-bit RGBA uncompressed, plus 16 MiB of
    metadata), so a larger file is refused before it is read into memory."""
    return max_pixels * 8 + (16 << 20)


def _open_checked(fp, size: int, rel: str, opts: ImageOptions) -> Image.Image:
    """Open an image from ``fp`` under every guard; decode its pixels only in ``full`` mode.

    The order matters: the header gives the size; the pixel limit and the minimum side are checked
    before any decode, so no decode ever runs on an image over the pixel limit (Pillow's own bomb
    check at open time, ``Image.MAX_IMAGE_PIXELS``, is a second net). ``header`` mode stops there.
    """
    if size == 0:
        raise Reject("image_unreadable", f"image {rel!r} is an empty file (0 bytes)")
    try:
        img = Image.open(fp)
        w, h = img.size
    except Image.DecompressionBombError as exc:
        raise Reject("image_too_large", f"image {rel!r}: {exc}") from None
    except DECODE_ERRORS as exc:  # garbage in any of the ways Pillow reports it: "not an image"
        raise Reject("image_unreadable", f"image {rel!r}: {exc}") from None
    if w * h > opts.max_pixels:
        raise Reject("image_too_large", f"image {rel!r} is {w}x{h}, over the {opts.max_pixels}-pixel limit")
    if opts.min_side and min(w, h) < opts.min_side:
        raise Reject("image_too_small", f"image {rel!r} is {w}x{h}, shorter side under {opts.min_side}")
    if opts.check == "full":
        try:
            img.load()
        except Image.DecompressionBombError as exc:
            raise Reject("image_too_large", f"image {rel!r}: {exc}") from None
        except DECODE_ERRORS as exc:  # truncated data, bad compression stream, ...
            raise Reject("image_unreadable", f"image {rel!r} cannot be decoded: {exc}") from None
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


#: EXIF orientations that transpose the image (5-8 also swap width and height); 1 and unknown values keep it.
_TRANSPOSING = {2, 3, 4, 5, 6, 7, 8}
#: Pillow modes a PNG holds as they are; any other (CMYK, YCbCr, ...) is stored as RGB.
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 when there is none or it cannot be read); needs only the header.

    Pillow's PNG ``getexif`` decodes the pixels to look for an eXIf chunk after the image data: here a PNG's
    EXIF is what was read so far (all of it once decoded; in ``header`` mode, a chunk before the pixels).
    """
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(0x0112, 1)
    except DECODE_ERRORS:  # a broken EXIF block is treated as none, as Pillow's exif_transpose does
        return 1
    return value if isinstance(value, int) else 1


def displayed_size(img: Image.Image, exif_transpose: bool = True) -> tuple[int, int]:
    """(width, height) as shown: EXIF orientations 5-8 swap the sides (transformers' load_image does too)."""
    w, h = img.size
    return (h, w) if exif_transpose and exif_orientation(img) in (5, 6, 7, 8) else (w, h)


def _transposed_png(img: Image.Image) -> tuple[bytes, Image.Image]:
    """The image turned upright (ImageOps.exif_transpose), stored losslessly as PNG: a decoder with or
    without an EXIF policy then sees the pixels transformers' load_image makes of the original file."""
    img.load()
    up = ImageOps.exif_transpose(img)
    if up.mode not in _PNG_MODES:
        up = up.convert("RGBA" if "A" in up.getbands() else "RGB")
    out = io.BytesIO()
    up.save(out, format="PNG", optimize=False)
    return out.getvalue(), up


def _embedded_bytes(ref, opts: ImageOptions) -> bytes:
    """The bytes of an image that came inside the input, under the file guards' size limit."""
    if len(ref.data) > max_file_bytes(opts.max_pixels):
        raise Reject("image_too_large", f"image {ref.where} is {len(ref.data)} bytes, more than an image within "
                                        f"the {opts.max_pixels}-pixel limit can take")
    return ref.data


def load_image(rel, opts: ImageOptions) -> LoadedImage:
    """Resolve, read and check one image for the shard (its bytes, re-encoded at ``max_side`` if set).

    ``rel`` is a path under the image root or an embedded image (bytes from a Parquet/Arrow cell or a
    tar member, :class:`parsit_data.sources.EmbeddedImage`): after reading, both go through the same
    guards and the same EXIF policy (``opts.exif_transpose``, transformers' ``load_image``): an image with
    a transposing orientation tag (a phone photo taken sideways) is turned upright and stored as PNG, and
    its size is the displayed size; any other image keeps its original bytes. Re-encoding needs the
    pixels, so it decodes even in ``header`` mode; that decode too comes after the pixel limit in
    :func:`_open_checked`.
    """
    if not isinstance(rel, str):  # embedded: named by where it is (source, row, member) in every detail
        data, name = _embedded_bytes(rel, opts), rel.where
        img = _open_checked(io.BytesIO(data), len(data), name, opts)
        return _finish(img, data, rel.name or name, name, opts)
    path = resolve_image_path(rel, opts.root)
    if isinstance(path, RemotePath):
        data = _read_object(path, rel, opts)
    else:
        data = _read_file(path, rel, opts)
    img = _open_checked(io.BytesIO(data), len(data), rel, opts)
    return _finish(img, data, rel, rel, opts)


def _finish(img: Image.Image, data: bytes, rel: str, name: str, opts: ImageOptions) -> LoadedImage:
    """EXIF policy, re-encoding and the perceptual hash of an image that passed the guards."""
    try:
        if opts.exif_transpose and exif_orientation(img) in _TRANSPOSING:
            data, img = _transposed_png(img)
        w, h = img.size
        if opts.max_side and max(w, h) > opts.max_side:
            data = _reencode(img, opts.max_side)
    except DECODE_ERRORS as exc:
        raise Reject("image_unreadable", f"image {name!r} cannot be decoded: {exc}") from None
    ph = None
    if opts.signatures:  # from the pixels decoded above (upright; decoded here in header mode)
        from parsit_data.dedup.signatures import phash

        try:
            ph = phash(img)
        except DECODE_ERRORS as exc:
            raise Reject("image_unreadable", f"image {name!r} cannot be decoded: {exc}") from None
    return LoadedImage(rel_path=rel, data=data, width=w, height=h, phash=ph)


def _read_object(path: RemotePath, rel: str, opts: ImageOptions) -> bytes:
    """An image under an object-store root: missing is bad data; a failing store (after retries) is not."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise Reject("image_missing", f"image {rel!r} does not exist under {path.parent}") from None
    if size > max_file_bytes(opts.max_pixels):
        raise Reject("image_too_large", f"image {rel!r} is {size} bytes, more than an image within the "
                                        f"{opts.max_pixels}-pixel limit can take")
    return path.read_bytes()


def _read_file(path: Path, rel: str, opts: ImageOptions) -> bytes:
    with _open_fd(path, rel) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_file_bytes(opts.max_pixels):
            raise Reject("image_too_large", f"image {rel!r} is {size} bytes, more than an image within the "
                                            f"{opts.max_pixels}-pixel limit can take")
        try:
            return f.read()
        except OSError as exc:
            raise Reject("image_unreadable", f"image {rel!r} cannot be read: {exc.strerror}") from None


def inspect_image(rel, opts: ImageOptions) -> ImageInfo:
    """The checks of :func:`load_image` without keeping the bytes: ``header`` mode reads headers only."""
    if not isinstance(rel, str):
        data = _embedded_bytes(rel, opts)
        img = _open_checked(io.BytesIO(data), len(data), rel.where, opts)
        w, h = displayed_size(img, opts.exif_transpose)
        return ImageInfo(rel_path=rel.name or rel.where, width=w, height=h)
    path = resolve_image_path(rel, opts.root)
    if isinstance(path, RemotePath):
        data = _read_object(path, rel, opts)
        img = _open_checked(io.BytesIO(data), len(data), rel, opts)
        w, h = displayed_size(img, opts.exif_transpose)
        return ImageInfo(rel_path=rel, width=w, height=h)
    with _open_fd(path, rel) as f:
        try:
            img = _open_checked(f, os.fstat(f.fileno()).st_size, rel, opts)
            w, h = displayed_size(img, opts.exif_transpose)
        except OSError as exc:
            raise Reject("image_unreadable", f"image {rel!r} cannot be read: {exc.strerror}") from None
    return ImageInfo(rel_path=rel, width=w, height=h)
