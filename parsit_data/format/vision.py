"""The vision geometry a build was made for: how many visual tokens an image becomes.

Both stages need the same rule: the build counts each image's tokens into the row's length, the
trainer cuts the image into the crops that make exactly that many tokens (``parsit_train.data.images``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Aspect = Literal["pad", "square", "anyres"]


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
