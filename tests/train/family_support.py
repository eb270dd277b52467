"""Helpers of the family tests: a tiny LLaVA-NeXT / OneVision processor folder (transformers' own classes,
saved with ``save_pretrained``, the real Qwen3 tokenizer), a real build made with ``--processor`` from it
(pillow images of varied sizes, single- and multi-image records), and a tiny training config.

Tiny geometry: crop 28, patch 14 (2x2 = 4 patches per crop), pinpoints up to 3x3 crops; OneVision with
``anyres_max_2`` so large images take the downscaling branch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import IMAGE_SIZE, PATCH_SIZE, TINY_LM, TINY_VISION, tiny_config  # noqa: E402

PINPOINTS = [[IMAGE_SIZE * a, IMAGE_SIZE * b] for a in range(1, 4) for b in range(1, 4)]
SIZES = [(40, 30), (30, 50), (64, 64), (90, 20), (17, 80), (1, 1), (120, 61), (33, 33)]
COLOURS = ["red", "green", "blue", "yellow"]
RGB = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (230, 220, 40)}


def make_processor_dir(root: Path, family: str) -> Path:
    """A processor folder of ``family`` (llava_next: CLIP-like strategy default with one CLS; llava_onevision:
    SigLIP-like strategy full, anyres_max_2), with the bundled Qwen3 tokenizer and <|image_pad|>."""
    from transformers import AutoTokenizer

    from parsit_data.format import bundled_qwen3_tokenizer
    from parsit_train.families import allow_onevision_processor

    tok = AutoTokenizer.from_pretrained(str(bundled_qwen3_tokenizer()))
    common = dict(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                  do_center_crop=False, image_grid_pinpoints=PINPOINTS, image_mean=[0.5, 0.5, 0.5],
                  image_std=[0.5, 0.5, 0.5])
    out = root / f"proc_{family}"
    if family == "llava_next":
        from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

        proc = LlavaNextProcessor(image_processor=LlavaNextImageProcessorPil(**common), tokenizer=tok,
                                  patch_size=PATCH_SIZE, vision_feature_select_strategy="full",
                                  image_token="<|image_pad|>", num_additional_image_tokens=0)
    else:
        from transformers import LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor
        from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

        allow_onevision_processor()
        proc = LlavaOnevisionProcessor(image_processor=LlavaOnevisionImageProcessorPil(**common), tokenizer=tok,
                                       video_processor=LlavaOnevisionVideoProcessor(),
                                       num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
                                       vision_feature_select_strategy="full", image_token="<|image_pad|>",
                                       video_token="<|video_pad|>", vision_aspect_ratio="anyres_max_2")
    proc.save_pretrained(str(out))
    return out


def make_family_build(root: Path, family: str, n: int = 12, n_multi: int = 4, n_text: int = 4) -> Path:
    """A real build with ``--processor``: ``n`` one-image records (sizes from SIZES), ``n_multi`` two-image
    records and ``n_text`` text-only ones; answers name the first image's colour."""
    from PIL import Image

    from parsit_data.build import build
    from parsit_data.config import BuildConfig

    proc = make_processor_dir(root, family)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n + n_multi):
        names = []
        for k in range(1 if i < n else 2):
            colour = COLOURS[(i + k) % len(COLOURS)]
            w, h = SIZES[(i + 3 * k) % len(SIZES)]
            name = f"img{i}_{k}.png"
            Image.new("RGB", (w, h), RGB[colour]).save(images / name)
            names.append(name)
        ph = "<image>\n" * len(names)
        records.append({"id": f"rec-{i:03d}", "image": names if len(names) > 1 else names[0], "conversations": [
            {"from": "human", "value": f"{ph}What colour is the first picture?"},
            {"from": "gpt", "value": f"It is {COLOURS[i % len(COLOURS)]}."}]})
    for i in range(n_text):
        records.append({"id": f"txt-{i:03d}", "conversations": [
            {"from": "human", "value": f"Name colour {i}."}, {"from": "gpt", "value": f"{COLOURS[i % 4]}."}]})
    src = root / "records.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = root / f"build_{family}"
    build(BuildConfig(inputs=[str(src)], out=str(out), image_root=str(images), processor=str(proc),
                      tokenizer="qwen3", max_length=256, shard_rows=8))
    return out


def family_config(build_dir: Path, out: Path, lm: dict | None = None, vision: dict | None = None, **over) -> dict:
    """The tiny training config of a family build (the family comes from the build's manifest)."""
    cfg = tiny_config(build_dir, out, **over)
    cfg["model"] = {**cfg["model"], "vision_tower": {"config": dict(vision or TINY_VISION)},
                    "language_model": {"config": dict(lm or TINY_LM)}}
    return cfg
