"""Helpers of the trainer tests: real builds made by ``parsit_data.build`` from pillow images.

Geometry is tiny (image_size 28, patch 14 -> 4 visual tokens per crop) so a build takes well under a
second, but everything else is real: the Qwen3 tokenizer, the ChatML template, Arrow shards, manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
               "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

from PIL import Image  # noqa: E402

from parsit_data.build import build  # noqa: E402
from parsit_data.config import BuildConfig  # noqa: E402
from parsit_data.format import bundled_qwen3_tokenizer  # noqa: E402

QWEN_IMAGE_PAD = 151655  # <|image_pad|>
QWEN_EOS = 151645  # <|im_end|>
QWEN_PAD = 151643  # <|endoftext|>

_WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def write_records(folder: Path, name: str, n_image: int, n_text: int, image_sizes=((40, 30), (30, 50), (64, 64))) -> Path:
    """A JSONL of ``n_image`` one-image records and ``n_text`` text-only ones, of varied lengths."""
    img_dir = folder / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_image + n_text):
        words = " ".join(_WORDS[(i + k) % len(_WORDS)] for k in range(1 + (i * 7) % 23))
        rec = {"id": f"{name}-{i:05d}"}
        if i < n_image:
            w, h = image_sizes[i % len(image_sizes)]
            rel = f"{name}-{i:05d}.png"
            Image.new("RGB", (w, h), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)).save(img_dir / rel)
            rec["image"] = rel
            rec["conversations"] = [{"from": "human", "value": f"<image>\nWhat is in picture {i}?"},
                                    {"from": "gpt", "value": f"Picture {i} shows {words}."}]
        else:
            rec["conversations"] = [{"from": "human", "value": f"Say something about {i}."},
                                    {"from": "gpt", "value": f"Text {i}: {words}."}]
        lines.append(json.dumps(rec))
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_build(folder: Path, name: str, n_image: int = 24, n_text: int = 16, **options) -> Path:
    """Run the real builder; returns the build directory."""
    src = write_records(folder / "src", name, n_image, n_text)
    out = folder / name
    cfg = BuildConfig(inputs=[str(src)], out=str(out), tokenizer=str(bundled_qwen3_tokenizer()),
                      image_root=str(folder / "src" / "images"), image_size=28, patch_size=14,
                      **{"shard_rows": 16, **options})
    build(cfg)
    return out
