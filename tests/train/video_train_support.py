"""A real OneVision build of video, image and text records for the trainer's video tests.

Clips are made with tests/data/video_support.py (each frame carries its index in its pixels); the processor
folder is transformers' own ``LlavaOnevisionProcessor`` at the tiny geometry (crop 28, patch 14: 4 patch
tokens a crop, 1 pooled token a frame) with a video processor at 28x28 and its class's OpenAI CLIP
mean/std. ``--video-frames 4``: the 12- and 40-frame clips give 4 frames (5 video tokens), the 3-frame clip
keeps its 3 (4 tokens). One record holds an image and a video.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from family_support import PINPOINTS, RGB  # noqa: E402
from train_helpers import IMAGE_SIZE, PATCH_SIZE  # noqa: E402

CLIPS = {"long.mp4": 40, "mid.mp4": 12, "short.mp4": 3}
VIDEO_FRAMES = 4


def make_video_processor_dir(root: Path) -> Path:
    from transformers import AutoTokenizer, LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    from parsit_data.format import bundled_qwen3_tokenizer
    from parsit_train.families import allow_onevision_processor

    allow_onevision_processor()
    tok = AutoTokenizer.from_pretrained(str(bundled_qwen3_tokenizer()))
    ip = LlavaOnevisionImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False,
                                         image_grid_pinpoints=PINPOINTS, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    vp = LlavaOnevisionVideoProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    proc = LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=vp,
                                   num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
                                   vision_feature_select_strategy="full", image_token="<|image_pad|>",
                                   video_token="<|video_pad|>", vision_aspect_ratio="anyres_max_2")
    out = root / "proc_ov_video"
    proc.save_pretrained(str(out))
    return out


def video_records(n_video: int = 9, n_image: int = 6, n_text: int = 5) -> list[dict]:
    names = list(CLIPS)
    recs = []
    for i in range(n_video):
        recs.append({"id": f"vid-{i:03d}", "video": names[i % len(names)], "conversations": [
            {"from": "human", "value": "<image>\nWhat does the counter show?"},
            {"from": "gpt", "value": f"It counts up, clip {names[i % len(names)].split('.')[0]} number {i}."}]})
    colours = list(RGB)
    for i in range(n_image):
        recs.append({"id": f"img-{i:03d}", "image": f"img{i % 4}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"},
            {"from": "gpt", "value": f"It is {colours[i % 4]}."}]})
    recs.append({"id": "both-000", "image": "img1.png", "video": "mid.mp4", "conversations": [  # image and video
        {"from": "human", "value": "<image>\n<video>\nDoes the picture match the clip?"},
        {"from": "gpt", "value": "No, the picture is green."}]})
    for i in range(n_text):
        recs.append({"id": f"txt-{i:03d}", "conversations": [
            {"from": "human", "value": f"Say the number {i}."}, {"from": "gpt", "value": f"{i}."}]})
    return recs


def make_video_build(root: Path, **over) -> Path:
    """The build (``root/build``) of :func:`video_records` with the clips and images under ``root/media``."""
    from PIL import Image
    from video_support import make_clip

    from parsit_data.build import build
    from parsit_data.config import BuildConfig

    root.mkdir(parents=True, exist_ok=True)
    media = root / "media"
    media.mkdir(exist_ok=True)
    for name, frames in CLIPS.items():
        make_clip(media / name, frames, size=(64, 48))
    sizes = [(40, 30), (30, 50), (64, 64), (90, 20)]
    for i, colour in enumerate(RGB):
        Image.new("RGB", sizes[i], RGB[colour]).save(media / f"img{i}.png")
    src = root / "records.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in video_records()), encoding="utf-8")
    out = root / "build"
    kw = dict(inputs=[str(src)], out=str(out), image_root=str(media), processor=str(make_video_processor_dir(root)),
              tokenizer="qwen3", max_length=256, shard_rows=8, video_frames=VIDEO_FRAMES, near_duplicates="off")
    build(BuildConfig(**{**kw, **over}))
    return out
