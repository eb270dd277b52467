"""The vision geometry a build was made for: how many visual tokens an image becomes.

Both stages need the same rule: the build counts each image's tokens into the row's length, the
trainer cuts the image into the crops that make exactly that many tokens. The rule depends on the
model family, and each family's rule is transformers' own, transcribed and kept equal by a differential
test (tests/test_vision_families.py) against the processor call and the model's ``get_image_features``:

- ``llava`` (``LlavaProcessor``): one crop, ``(image_size // patch_size) ** 2`` patches
  ``+ num_additional_image_tokens`` (a CLS), ``- 1`` with the ``default`` strategy (it drops CLS).
- ``llava_next`` (``LlavaNextProcessor._get_number_of_features``): the base crop, plus the anyres grid
  (the pinpoint :func:`select_best_resolution` picks) with its padding removed ("spatial unpad") and one
  ``image_newline`` per remaining row of patches.
- ``llava_onevision`` (``LlavaOnevisionProcessor``): as ``llava_next`` (without CLS arithmetic in the
  base), but a grid larger than ``anyres_max_N`` crops' worth of patches is downscaled by
  ``ratio = sqrt(h * w / (N * side ** 2))`` when ``ratio > 1.1``; and in a sample with more than one
  image each image is only its base crop plus one newline (``replace_image_token``'s multi-image rule;
  the model does the same with ``batch_num_images``).

Grid pinpoints are ``(height, width)`` pairs, as transformers' ``image_grid_pinpoints``.
Sizes passed to :meth:`VisionGeometry.tokens_for` are the displayed size (after the EXIF policy).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from parsit_data.errors import ParsitError

Aspect = Literal["pad", "square", "anyres"]
Family = Literal["llava", "llava_next", "llava_onevision"]
Strategy = Literal["default", "full"]
ExifPolicy = Literal["transpose", "none"]

FAMILIES: tuple[str, ...] = ("llava", "llava_next", "llava_onevision")
#: transformers' processor class -> family
PROCESSOR_FAMILIES = {"LlavaProcessor": "llava", "LlavaNextProcessor": "llava_next",
                      "LlavaOnevisionProcessor": "llava_onevision"}
#: image processor class (any backend suffix) -> family, when the folder names no processor class
_IMAGE_PROCESSOR_FAMILIES = {"LlavaNextImageProcessor": "llava_next", "LlavaOnevisionImageProcessor": "llava_onevision"}
DEFAULT_PINPOINTS = ((384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152))


@dataclass(frozen=True)
class VisionGeometry:
    """What the vision tower sees; decides each image's number of visual tokens.

    Defaults are SigLIP so400m-patch14-384: (384 // 14) ** 2 = 27 ** 2 = 729 tokens per crop.
    ``image_size`` is one crop's side (``pixel_values``' height and width, the tower's ``image_size``).
    ``image_processor`` / ``processor`` are the processor folder's configs verbatim (None without
    ``--processor``), so the trainer and the export can rebuild the exact processor.
    """

    image_size: int = 384
    patch_size: int = 14
    aspect: Aspect = "pad"
    grid_pinpoints: tuple[tuple[int, int], ...] = DEFAULT_PINPOINTS
    family: Family = "llava"
    vision_feature_select_strategy: Strategy = "full"
    vision_aspect_ratio: str | None = None  # llava_onevision: "anyres_max_N"
    num_additional_image_tokens: int = 0  # llava / llava_next: 1 for a CLIP tower's CLS
    num_image_tokens: int | None = None  # llava_onevision's processor field; None: (image_size // patch_size) ** 2
    image_token: str = "<image>"
    exif: ExifPolicy = "transpose"
    image_processor: dict | None = field(default=None, compare=False, hash=False)
    processor: dict | None = field(default=None, compare=False, hash=False)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ParsitError(f"unknown vision family {self.family!r}: one of {', '.join(FAMILIES)}")
        if self.family == "llava" and self.aspect == "anyres":
            raise ParsitError("aspect 'anyres' is the llava_next / llava_onevision family's rule, not plain llava's")
        if self.family != "llava" and not self.grid_pinpoints:
            raise ParsitError(f"family {self.family} needs grid pinpoints (image_grid_pinpoints)")
        if self.family == "llava_onevision":
            max_crops(self.vision_aspect_ratio)  # refuses a malformed anyres_max_N

    @property
    def patches_per_side(self) -> int:
        if self.family == "llava_onevision" and self.num_image_tokens:
            return math.isqrt(self.num_image_tokens)  # the processor's int(sqrt(num_image_tokens))
        return self.image_size // self.patch_size

    @property
    def tokens_per_crop(self) -> int:
        """Patch features of one crop (the base image), before CLS and strategy arithmetic."""
        if self.family == "llava_onevision" and self.num_image_tokens:
            return self.num_image_tokens
        return (self.image_size // self.patch_size) ** 2

    def tokens_for(self, width: int, height: int, images_in_sample: int = 1) -> int:
        """Visual tokens for one image of displayed size ``width`` x ``height`` in a sample of
        ``images_in_sample`` images (only llava_onevision's count depends on it)."""
        if self.family == "llava":
            return llava_tokens(self)
        if self.family == "llava_next":
            return llava_next_tokens(self, width, height)
        return llava_onevision_tokens(self, width, height, images_in_sample)

    def grid_for(self, width: int, height: int, images_in_sample: int = 1) -> tuple[int, int]:
        """(rows, columns) of anyres crops the image is cut into, besides its base crop; (0, 0) for none."""
        if self.family == "llava" or (self.family == "llava_onevision" and images_in_sample > 1):
            return (0, 0)
        bh, bw = select_best_resolution((height, width), self.grid_pinpoints)
        return (bh // self.image_size, bw // self.image_size)

    def crops_for(self, width: int, height: int, images_in_sample: int = 1) -> int:
        """Crops the vision tower encodes for the image (``pixel_values`` rows): base + grid."""
        rows, cols = self.grid_for(width, height, images_in_sample)
        return 1 + rows * cols

    def to_json(self) -> dict:
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "aspect": self.aspect,
            "tokens_per_image": self.tokens_per_crop,
            "grid_pinpoints": [list(p) for p in self.grid_pinpoints],
            "family": self.family,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "vision_aspect_ratio": self.vision_aspect_ratio,
            "num_additional_image_tokens": self.num_additional_image_tokens,
            "num_image_tokens": self.num_image_tokens,
            "image_token": self.image_token,
            "exif": self.exif,
            "image_processor": self.image_processor,
            "processor": self.processor,
        }

    @classmethod
    def from_json(cls, data: dict) -> "VisionGeometry":
        """The geometry of a manifest's ``vision`` entry. A manifest older than the families (no ``family``)
        reads as ``llava`` with its own fields and no EXIF policy (those builds stored bytes as found)."""
        data = dict(data)
        if "family" not in data or data["family"] is None:
            if data.get("aspect") == "anyres":
                raise ParsitError("this build counted 'anyres' images with Parsit's old rule, which no model "
                                  "reproduces: rebuild it (parsit-data build --processor DIR, or --aspect anyres)")
            data.setdefault("exif", "none")
        keys = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in data.items() if k in keys}
        if "grid_pinpoints" in kw:
            kw["grid_pinpoints"] = tuple(tuple(int(x) for x in p) for p in kw["grid_pinpoints"] or ())
        return cls(**kw)

    @classmethod
    def from_processor_dir(cls, path: str | Path, exif: ExifPolicy = "transpose") -> "VisionGeometry":
        """The geometry of a Hugging Face processor folder (``LlavaProcessor``, ``LlavaNextProcessor`` or
        ``LlavaOnevisionProcessor``). One :class:`ParsitError` naming the file and the field when the folder
        is not a LLaVA family or lacks a field."""
        return _from_processor_dir(Path(path), exif)


# -- the per-family rules (transformers' processors, transcribed) ----------------------------------

def llava_tokens(g: VisionGeometry) -> int:
    """``LlavaProcessor``: ``(h // patch) * (w // patch) + num_additional_image_tokens``, -1 for ``default``."""
    n = (g.image_size // g.patch_size) ** 2 + g.num_additional_image_tokens
    return n - 1 if g.vision_feature_select_strategy == "default" else n


def unpadded_features(height: int, width: int, patches_height: int, patches_width: int, scale_height: int,
                      scale_width: int, max_crops_: int | None = None) -> tuple[int, int]:
    """``_get_unpadded_features`` of LlavaNext/LlavaOnevision: (features, newline features) of the grid.

    ``height``/``width`` are the original (displayed) size; ``max_crops_`` is OneVision's N (None: NeXT).
    """
    current_height = patches_height * scale_height
    current_width = patches_width * scale_width
    original_aspect_ratio = width / height
    current_aspect_ratio = current_width / current_height
    if original_aspect_ratio > current_aspect_ratio:
        new_height = int(round(height * (current_width / width), 7))
        padding = (current_height - new_height) // 2
        current_height -= padding * 2
    else:
        new_width = int(round(width * (current_height / height), 7))
        padding = (current_width - new_width) // 2
        current_width -= padding * 2
    features, newlines = current_height * current_width, current_height
    if max_crops_ is not None:
        ratio = math.sqrt(current_height * current_width / (max_crops_ * patches_height ** 2))
        if ratio > 1.1:
            features = int(current_height // ratio) * int(current_width // ratio)
            newlines = int(current_height // ratio)
    return features, newlines


def _grid_scale(g: VisionGeometry, width: int, height: int) -> tuple[int, int]:
    bh, bw = select_best_resolution((height, width), g.grid_pinpoints)
    return bh // g.image_size, bw // g.image_size


def llava_next_tokens(g: VisionGeometry, width: int, height: int) -> int:
    """``LlavaNextProcessor._get_number_of_features`` (and -1 for the ``default`` strategy)."""
    side = g.image_size // g.patch_size
    sh, sw = _grid_scale(g, width, height)
    feats, newlines = unpadded_features(height, width, side, side, sh, sw)
    n = feats + newlines + side * side + g.num_additional_image_tokens
    return n - 1 if g.vision_feature_select_strategy == "default" else n


def llava_onevision_tokens(g: VisionGeometry, width: int, height: int, images_in_sample: int = 1) -> int:
    """``LlavaOnevisionProcessor.replace_image_token``: multi-image samples get base + 1 newline per image."""
    base = g.tokens_per_crop
    if images_in_sample > 1:
        n = base + 1
    else:
        side = g.patches_per_side
        sh, sw = _grid_scale(g, width, height)
        feats, newlines = unpadded_features(height, width, side, side, sh, sw, max_crops(g.vision_aspect_ratio))
        n = feats + newlines + base
    return n - 1 if g.vision_feature_select_strategy == "default" else n


def max_crops(vision_aspect_ratio: str | None) -> int:
    """N of ``anyres_max_N`` (transformers: ``int(ratio.strip("anyres_max_"))``)."""
    text = vision_aspect_ratio or ""
    if not text.startswith("anyres_max_") or not text[len("anyres_max_"):].isdigit() \
            or int(text[len("anyres_max_"):]) < 1:
        raise ParsitError(f"vision_aspect_ratio {vision_aspect_ratio!r} is not anyres_max_N (e.g. anyres_max_9)")
    return int(text[len("anyres_max_"):])


def select_best_resolution(size: tuple[int, int], pinpoints) -> tuple[int, int]:
    """transformers' ``select_best_resolution``: ``size`` and every pinpoint are (height, width).

    The pinpoint that keeps the most effective resolution, then the least waste.
    """
    h, w = size
    best, best_eff, best_waste = None, 0, float("inf")
    for ph, pw in pinpoints:
        scale = min(pw / w, ph / h)
        dw, dh = int(w * scale), int(h * scale)
        eff = min(dw * dh, w * h)
        waste = pw * ph - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (ph, pw), eff, waste
    return best


# -- reading a processor folder ------------------------------------------------------------------

def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParsitError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ParsitError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _side(size: Any, file: Path, name: str) -> int | None:
    """One square side of a ``size`` / ``crop_size`` field (None when absent)."""
    if size is None:
        return None
    if isinstance(size, int):
        return size
    if not isinstance(size, dict):
        raise ParsitError(f"{file}: field {name} must be an object such as {{\"height\": 384, \"width\": 384}}")
    if "shortest_edge" in size and size["shortest_edge"] is not None:
        return int(size["shortest_edge"])
    h, w = size.get("height"), size.get("width")
    if h is None or w is None:
        raise ParsitError(f"{file}: field {name} has neither shortest_edge nor height and width")
    if h != w:
        raise ParsitError(f"{file}: field {name} is {h}x{w}; LLaVA crops are square")
    return int(h)


def _from_processor_dir(folder: Path, exif: ExifPolicy) -> VisionGeometry:
    if not folder.is_dir():
        raise ParsitError(f"--processor {folder}: not a directory (a Hugging Face processor folder)")
    pre_file, proc_file = folder / "preprocessor_config.json", folder / "processor_config.json"
    pre, proc = _read_json(pre_file), _read_json(proc_file)
    proc = dict(proc or {})
    # transformers >= 5 nests the image processor in processor_config.json; older folders have it apart.
    img_file = pre_file if pre is not None else proc_file
    img = pre if pre is not None else proc.pop("image_processor", None)
    proc.pop("image_processor", None)
    proc.pop("video_processor", None)
    if not isinstance(img, dict):
        raise ParsitError(f"{folder}: no image processor config: neither {pre_file.name} nor the field "
                          f"image_processor of {proc_file.name} (is this a Hugging Face processor folder?)")
    cls_name = proc.get("processor_class") or img.get("processor_class")
    img_type = str(img.get("image_processor_type") or "")
    family = PROCESSOR_FAMILIES.get(cls_name) if cls_name else None
    if family is None and not cls_name:
        family = _IMAGE_PROCESSOR_FAMILIES.get(img_type.removesuffix("Fast").removesuffix("Pil"))
    if family is None:
        where = proc_file if proc.get("processor_class") else img_file
        found = cls_name or img_type or "nothing"
        raise ParsitError(f"{where}: field processor_class is {found!r}, not a LLaVA family "
                          f"({', '.join(PROCESSOR_FAMILIES)})")

    def need(d: dict, f: Path, name: str):
        if d.get(name) is None:
            raise ParsitError(f"{f}: missing field {name} (needed for a {family} processor)")
        return d[name]

    size = _side(img.get("size"), img_file, "size")
    crop = _side(img.get("crop_size"), img_file, "crop_size")
    # the tile (crop) side: the image processors use crop_size.height, else size.height, else shortest_edge
    tile = crop or size
    if tile is None:
        raise ParsitError(f"{img_file}: missing field size (and crop_size): the crop side is unknown")
    # Required: a processor without it behaves as "full" while the model's config defaults to "default".
    strategy = need(proc, proc_file, "vision_feature_select_strategy")
    if strategy not in ("default", "full"):
        raise ParsitError(f"{proc_file}: field vision_feature_select_strategy is {strategy!r}: default or full")
    image_token = proc.get("image_token") or _tokenizer_image_token(folder) or "<image>"
    kw: dict[str, Any] = dict(image_size=tile, family=family, vision_feature_select_strategy=strategy,
                              image_token=image_token, exif=exif, image_processor=img, processor=proc)
    if family in ("llava", "llava_next"):
        kw["patch_size"] = int(need(proc, proc_file, "patch_size"))
        kw["num_additional_image_tokens"] = int(proc.get("num_additional_image_tokens") or 0)
        kw["aspect"] = "anyres" if family == "llava_next" else "square"
    else:
        n = int(need(proc, proc_file, "num_image_tokens"))
        side = math.isqrt(n)
        if side < 1:
            raise ParsitError(f"{proc_file}: field num_image_tokens is {n}")
        kw.update(patch_size=max(1, tile // side), num_image_tokens=n, aspect="anyres",
                  vision_aspect_ratio=proc.get("vision_aspect_ratio") or "anyres_max_9")
        try:
            max_crops(kw["vision_aspect_ratio"])
        except ParsitError as exc:
            raise ParsitError(f"{proc_file}: field {exc}") from None
    if family != "llava":
        pins = need(img, img_file, "image_grid_pinpoints")
        try:
            kw["grid_pinpoints"] = tuple((int(h), int(w)) for h, w in pins)
        except (TypeError, ValueError):
            raise ParsitError(f"{img_file}: field image_grid_pinpoints must be a list of [height, width]") from None
        if not kw["grid_pinpoints"]:
            raise ParsitError(f"{img_file}: field image_grid_pinpoints is empty")
    return VisionGeometry(**kw)


def _tokenizer_image_token(folder: Path) -> str | None:
    """transformers 5 keeps a processor's image token in tokenizer_config.json's extra special tokens."""
    cfg = _read_json(folder / "tokenizer_config.json") or {}
    extra = cfg.get("extra_special_tokens") or cfg.get("model_specific_special_tokens") or {}
    tok = extra.get("image_token") if isinstance(extra, dict) else None
    return tok if isinstance(tok, str) else None
